"""Servers sharing one real Redis: delivery, resume anywhere, and what a Redis outage does.

Two ``python -m comet.server --redis URL`` processes stand for two machines;
the Redis is a real ``redis-server`` of the test's own (tests/redisservers.py),
and the tests of both servers run again on the session's three-node Redis
Cluster (``--redis-cluster``; its own tests: tests/test_redis_cluster.py).
No sticky sessions: a client resumes on whichever server it reaches.

In a cluster a client's position is one element per stream it reads
(comet/broker/cursor.py) and messages of different streams come in no fixed
order: :func:`message_id` reads one stream's element of an event id, and
:func:`per_stream` compares orders stream by stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import pytest
import requests
import websocket

from comet.broker import cursor
from tests.chunked import open_stream
from tests.realserver import RealServer, free_port, post, subscribed
from tests.sse import open_events

BROKERS = {"redis": ("redis_server",), "cluster": ("redis_cluster", "--redis-cluster")}


def broker_args(request, kind: str) -> list[str]:
    fixture, *flags = BROKERS[kind]
    return ["--redis", request.getfixturevalue(fixture).url, *flags]


@pytest.fixture(params=[(b, h) for b in BROKERS for h in ("on", "off")],
                ids=lambda p: f"{p[0]}-{'hibernate' if p[1] == 'on' else 'plain'}")
def pair(request):
    """Two servers on one Redis (or cluster), both in the same connection life."""
    kind, hibernate = request.param
    servers = [RealServer(*broker_args(request, kind), "--interval", "0.2",
                          "--poll-timeout", "1", "--hibernate", hibernate).start()
               for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(params=sorted(BROKERS))
def redis_args(request) -> list[str]:
    """The flags of one Redis, or of the cluster."""
    return broker_args(request, request.param)


def message_id(position: str, stream: str) -> str:
    """The id of the message a position was last moved by in ``stream``: the position
    itself with one Redis, its element for ``stream`` in a cluster."""
    elements = cursor.parse(position)
    if elements is None:
        return position
    epoch, offset = elements[stream]
    return f"{epoch}-{offset}"


def per_stream(pairs) -> list:
    """(stream, message id) pairs in the order a broker promises: each stream's own."""
    return sorted(pairs, key=lambda pair: pair[0])



def test_a_message_reaches_its_id_on_the_other_server_once_in_every_transport(pair):
    one, two = pair
    stream = open_stream(two.port, "/test/u")
    events = open_events(two.port, "/events/u")
    ws = websocket.create_connection(f"ws://127.0.0.1:{two.port}/ws/u", timeout=10)
    two.wait_for(lambda s: s["connections"]["total"] == 3, what="three subscribers")
    poll = {}
    thread = threading.Thread(target=lambda: poll.update(
        requests.get(f"{two.url}/poll/u", timeout=10).json()))
    thread.start()
    two.wait_for(lambda s: s["connections"].get("poll") == 1, what="a waiting poll")
    sent = post(one, "/send/u", b"across")
    assert sent["delivered"] is None  # another process may deliver it: no local count
    assert stream.chunks_until(lambda c: b"across" in c)[-1].endswith(b"Recvd msg: across\n")
    event = events.next_message()
    assert (event.data, message_id(event.id, "u")) == ("across", sent["message"])
    assert ws.recv() == "across"
    thread.join(10)
    assert [m["data"] for m in poll["messages"]] == ["across"]
    post(one, "/send/u", b"second")
    assert events.next_message().data == "second"  # not the first again
    assert ws.recv() == "second"
    stats = two.stats()
    assert stats["messages"]["out"] == 4 + 3 and stats["broker"]["kind"].startswith("redis")
    ws.close()
    stream.close()
    events.close()


def test_a_broadcast_reaches_every_connection_on_both_servers_once(pair):
    streams = [open_events(server.port, f"/events/b{n}") for n, server in enumerate(pair)]
    for server in pair:
        subscribed(server, 1)
    sent = post(pair[0], "/broadcast", b"everyone")
    for events in streams:
        event = events.next_message()
        assert (event.data, message_id(event.id, "*")) == ("everyone", sent["message"])
    post(pair[1], "/send/b0", b"after")
    assert streams[0].next_message().data == "after"
    for events in streams:
        events.close()


def test_a_client_resumes_on_the_other_server_with_no_gap_and_no_duplicate(pair):
    one, two = pair
    events = open_events(one.port, "/events/r")
    subscribed(one, 1)
    first = post(two, "/send/r", b"m1")["message"]
    seen = events.next_message()
    assert message_id(seen.id, "r") == first
    events.close()
    missed = [post(two, "/send/r", b"m%d" % n)["message"] for n in (2, 3)]
    every = post(two, "/broadcast", b"all")["message"]
    post(two, "/send/other", b"not for r")
    resumed = open_events(two.port, "/events/r", {"Last-Event-ID": seen.id})
    got = [resumed.next_message() for _ in range(3)]
    streams = {"m2": "r", "m3": "r", "all": "*"}
    assert per_stream((streams[e.data], message_id(e.id, streams[e.data])) for e in got) \
        == per_stream([("r", missed[0]), ("r", missed[1]), ("*", every)])
    later = post(one, "/send/r", b"m4")["message"]
    assert message_id(resumed.next_message().id, "r") == later
    resumed.close()


def test_a_poll_resumes_on_the_other_server_from_its_since(pair):
    one, two = pair
    first = requests.get(f"{one.url}/poll/p?since=x-0", timeout=10)
    assert first.status_code == 200 and first.json()["missed"] is True
    position = first.json()["last"]
    sent = post(one, "/send/p", b"while away")["message"]
    answer = requests.get(f"{two.url}/poll/p", params={"since": position}, timeout=10).json()
    assert [message_id(m["id"], "p") for m in answer["messages"]] == [sent]
    assert not answer.get("missed")
    again = requests.get(f"{one.url}/poll/p", params={"since": answer["last"]}, timeout=10)
    assert again.json()["messages"] == [] and not again.json().get("missed")


def test_history_beyond_its_bound_is_missed_on_the_other_server(redis_args):
    servers = [RealServer(*redis_args, "--history", "2").start() for _ in range(2)]
    try:
        start = requests.get(f"{servers[0].url}/poll/h?since=x-0", timeout=10).json()["last"]
        for n in range(4):
            post(servers[0], "/send/h", b"%d" % n)
        resumed = open_events(servers[1].port, "/events/h", {"Last-Event-ID": start})
        notice = resumed.next_event()
        while notice.event != "missed":
            notice = resumed.next_event()
        assert [resumed.next_message().data for _ in range(2)] == ["2", "3"]
        resumed.close()
    finally:
        for server in servers:
            server.stop()


def test_redis_unreachable_at_start_is_a_clear_error_and_no_password_is_logged(redis_server):
    url = f"redis://:hunter2secret@127.0.0.1:{redis_server.port + 1}/0"
    redis_server.stop()
    server = RealServer("--redis", url)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=30)
    assert server.proc.wait(10) == 1
    text = server.log_text()
    assert "cannot reach Redis at redis://:***@127.0.0.1" in text
    assert "hunter2secret" not in text


def test_a_password_and_a_unix_socket_url_work_and_the_password_is_never_logged(tmp_path):
    from tests.redisservers import RedisServer, redis_binary_or_skip
    redis_binary_or_skip("redis-server")
    with RedisServer(password="s3cr3t-pw", unixsocket=True) as redis_server:
        url = redis_server.unix_url  # the password in it
        server = RealServer("--redis", url, "--log-level", "debug").start()
        try:
            events = open_events(server.port, "/events/x")
            subscribed(server, 1)
            post(server, "/send/x", b"over unix")
            assert events.next_message().data == "over unix"
            assert "s3cr3t-pw" not in server.log_text()
            assert "s3cr3t-pw" not in json.dumps(server.stats())
            events.close()
        finally:
            server.stop()


def test_a_rediss_url_speaks_tls_to_redis(tmp_path):
    """``rediss://``: redis-py's TLS options on gevent's SSL context (comet/broker/redisconn.py),
    against a Redis that listens on TLS only for the server, with a certificate checked."""
    from tests.redisservers import RedisServer, redis_binary_or_skip
    redis_binary_or_skip("redis-server")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH (it makes the test's certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls_port = free_port()
    with RedisServer("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        server = RealServer("--redis", url).start()
        try:
            events = open_events(server.port, "/events/t")
            subscribed(server, 1)
            post(server, "/send/t", b"over tls")
            assert events.next_message().data == "over tls"
            events.close()
        finally:
            server.stop()
        # and a certificate it cannot check is refused: no silent fallback to trusting it
        refused = RealServer("--redis", f"rediss://127.0.0.1:{tls_port}/0")
        with pytest.raises(RuntimeError, match="did not start"):
            refused.start()
        assert "certificate verify failed" in refused.log_text()


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:6379/0", "must be a redis://, rediss:// or unix:// URL"),
    ("redis://127.0.0.1:notaport/0", "cannot use the Redis URL"),
])
def test_a_bad_redis_url_is_a_clear_error_before_serving(url, says):
    server = RealServer("--redis", url)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=30)
    assert server.proc.wait(10) in (1, 2)
    text = server.log_text()
    assert says in text and "Traceback" not in text

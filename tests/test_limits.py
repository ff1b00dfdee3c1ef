"""Limits that protect the server: connections per client, new connections per second,
ids per connection, the request head, WebSocket frames; each refusal counted and
logged once per burst.

Real server processes on 127.0.0.1, real sockets; a second client address is
127.0.0.2 (all of 127/8 is loopback). Every wait is on a condition with a bound.
"""

from __future__ import annotations

import socket
import time

import requests
import websocket

from tests import tokenkeys as keys
from tests.chunked import StrictResponse
from tests.realserver import RealServer, post, wait_until
from tests.sse import open_events
from tests.workerservers import WorkersServer

PER_ADDRESS = "connections per address"
NEW_PER_SECOND = "new connections per second"


def raw_get(port: int, path: str, source: str = "127.0.0.1",
            headers: str = "") -> StrictResponse:
    """A GET from ``source``, its answer's head read (the body is the caller's)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    return StrictResponse(sock)


def held_stream(port: int, path: str, source: str = "127.0.0.1") -> StrictResponse:
    answer = raw_get(port, path, source)
    assert answer.status == 200, answer.status_line
    assert answer.next_chunk()  # the welcome: it is logged in, so counted
    return answer


def limits(server: RealServer) -> dict:
    return server.stats()["limits"]


def empty(stats: dict) -> bool:
    return (stats["connections"]["total"] == 0 and stats["limits"]["addresses"] == 0
            and stats["limits"]["held"] == 0)


# -- connections per client ----------------------------------------------------------------


def test_the_connection_over_max_per_ip_gets_429_and_one_gets_in_after_one_closes(
        start_server):
    server = start_server("--max-per-ip", "3", "--interval", "0.2", "--heartbeat", "0.2")
    held = [held_stream(server.port, f"/test/u{n}") for n in range(2)]
    held.append(open_events(server.port, "/events/u2"))
    server.wait_for(lambda s: s["limits"]["held"] == 3, what="three counted")
    for path in ("/test/u3", "/events/u3", "/poll/u3"):
        refused = raw_get(server.port, path)
        assert refused.status == 429, refused.status_line
        assert refused.headers["retry-after"] == "5"
        refused.close()
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/u3", timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 429  # refused before the upgrade, not after it
    else:
        ws.close()
        raise AssertionError("a fourth connection was upgraded")
    other = held_stream(server.port, "/test/elsewhere", source="127.0.0.2")
    stats = server.wait_for(lambda s: s["limits"]["held"] == 4, what="the other address")
    assert stats["limits"]["addresses"] == 2
    assert stats["limits"]["refused"] == {PER_ADDRESS: 4}
    held.pop(0).close()
    server.wait_for(lambda s: s["limits"]["held"] == 3, what="one released")
    held.append(held_stream(server.port, "/test/again"))
    for conn in [*held, other]:
        conn.close()
    server.wait_for(empty, what="every place released")


def test_an_ipv6_client_counts_by_its_64(start_server):
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        import pytest
        pytest.skip("no IPv6 loopback here")
    finally:
        probe.close()
    server = start_server("--host", "::1", "--max-per-ip", "1")
    sock = socket.create_connection(("::1", server.port), timeout=10)
    sock.sendall(b"GET /test/six HTTP/1.1\r\nHost: x\r\n\r\n")
    first = StrictResponse(sock)
    assert first.status == 200 and first.next_chunk()
    stats = requests.get(f"http://[::1]:{server.port}/stats", timeout=10).json()
    assert stats["limits"] == {"refused": {}, "addresses": 1, "held": 1}
    again = socket.create_connection(("::1", server.port), timeout=10)
    again.sendall(b"GET /test/six HTTP/1.1\r\nHost: x\r\n\r\n")
    assert StrictResponse(again).status == 429
    again.close()
    first.close()


def _slow_consumer(server: RealServer, token: str) -> None:
    """A stream whose client reads nothing while big messages come: dropped."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /test/u?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    server.wait_for(lambda s: s["connections"]["total"] >= 1, what="logged in")
    big = b"x" * 60000
    before = server.stats()["slow_consumers"]
    for _ in range(64):
        post(server, "/send/u", big)
        if server.stats()["slow_consumers"] > before:
            break
    server.wait_for(lambda s: s["slow_consumers"] > before, what="dropped as slow")
    sock.close()


def test_every_way_a_connection_ends_gives_its_place_back(start_server):
    """A few hundred connections from one address, ended every way they can end; then
    the per-address table is empty and /stats shows nothing held."""
    server = start_server("--max-per-ip", "500", "--interval", "0.2", "--heartbeat", "0.2",
                          "--poll-timeout", "0.2", "--queue-limit", "2",
                          "--token-leeway", "0", env={"COMET_TOKEN_SECRET": keys.SECRET})
    token = keys.hs256("u", ttl=600)
    session = requests.Session()  # long-polls come back on the same socket
    for _ in range(30):
        # client gone: streams and SSE closed by their client
        held_stream(server.port, f"/test/u?token={token}").close()
        open_events(server.port, f"/events/u?token={token}").close()
        # a long-poll answered by its timeout, then one answered by a message, on one socket
        assert session.get(f"{server.url}/poll/u?token={token}", timeout=10).status_code == 200
        waiting = raw_get(server.port, f"/poll/u?since=0-0&token={token}")
        assert waiting.status == 200
        waiting.close()
        # a WebSocket closed by its client, and one refused for a frame too big
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/u?token={token}",
                                         timeout=10)
        ws.close()
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/u?token={token}",
                                         timeout=10)
        ws.send("x" * 5000)
        try:
            while ws.recv():
                pass
        except (websocket.WebSocketException, OSError):
            pass
        ws.close()
        # refused after its token passed: too many ids (before admission), nothing counted
        many = "&".join(f"id=m{i}" for i in range(70))
        assert raw_get(server.port, f"/test/u?{many}&token={token}").status in (400, 403)
    for _ in range(3):
        _slow_consumer(server, token)
    # token expiry, on each transport at once
    short = keys.hs256("u", ttl=2)
    expiring = [held_stream(server.port, f"/test/u?token={short}"),
                open_events(server.port, f"/events/u?token={short}"),
                websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/u?token={short}",
                                            timeout=10)]
    stats = server.wait_for(lambda s: s["ends"].get("token expired", 0) >= 3, timeout=20,
                            what="three tokens expired")
    for conn in expiring:
        conn.close()
    stats = server.wait_for(empty, what="every place released")
    assert stats["accepted"] >= 6 * 30 + 3
    assert stats["ends"].get("message too big") == 30
    assert stats["limits"]["refused"]["websocket frame too big"] == 30
    assert "released but not counted" not in server.log_text()


def test_a_shutdown_ends_connections_counted_against_their_address(start_server):
    server = start_server("--max-per-ip", "5")
    streams = [held_stream(server.port, f"/test/s{n}") for n in range(3)]
    server.wait_for(lambda s: s["limits"]["held"] == 3, what="held")
    assert server.terminate() == 0
    for stream in streams:
        assert stream.chunks_until(lambda c: c == b"")[-1] == b""
    assert "released but not counted" not in server.log_text()


# -- new connections per second ------------------------------------------------------------


def test_a_burst_over_max_new_per_second_gets_503_then_the_bucket_refills(start_server):
    server = start_server("--max-new-per-second", "5")
    statuses = []
    for n in range(30):
        answer = raw_get(server.port, f"/test/b{n}")
        statuses.append(answer.status)
        if answer.status == 503:
            assert answer.headers["retry-after"] == "1"
        answer.close()
    assert 503 in statuses and 200 in statuses, statuses
    refused = statuses.count(503)
    stats = server.wait_for(lambda s: s["limits"]["refused"].get(NEW_PER_SECOND) == refused,
                            what="each 503 counted")
    assert set(stats["limits"]["refused"]) == {NEW_PER_SECOND}

    def admitted() -> bool:
        answer = raw_get(server.port, "/test/later")
        answer.close()
        return answer.status == 200
    wait_until(admitted, what="admitted again once the bucket refilled")


# -- the other limits, each counted -------------------------------------------------------


def test_request_head_and_ids_refusals_are_counted_by_kind(start_server):
    server = start_server("--read-timeout", "0.5", "--max-ids", "3")
    assert raw_get(server.port, "/test/a?id=b&id=c&id=d").status == 400
    assert raw_get(server.port, "/test/a?id=b&id=c").status == 200
    assert raw_get(server.port, "/test/" + "a" * 9000).status == 414
    many = "".join(f"X-H{n}: v\r\n" for n in range(120))
    assert raw_get(server.port, "/test/a", headers=many).status == 400
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET /test/a HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
    assert StrictResponse(slow).status == 408
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert silent.recv(10) == b""  # closed: no request line within --read-timeout
    stats = server.wait_for(lambda s: sum(s["limits"]["refused"].values()) == 5,
                            what="five refusals counted")
    assert stats["limits"]["refused"] == {
        "ids per connection": 1, "request line too long": 1, "request head too large": 1,
        "request head too slow": 2}
    assert "Traceback" not in server.log_text()


# -- logged once per burst ---------------------------------------------------------------


def test_fifty_refusals_are_one_line_then_one_summary(start_server):
    server = start_server("--max-per-ip", "1", "--interval", "0.2")
    held = held_stream(server.port, "/test/one")
    for n in range(50):
        refused = raw_get(server.port, f"/test/more{n}")
        assert refused.status == 429
        refused.close()
    server.wait_for(lambda s: s["limits"]["refused"].get(PER_ADDRESS) == 50, what="counted")
    summary = server.wait_for_log("49 more refused")
    assert "connections per address" in summary
    lines = [line for line in server.lines if "--max-per-ip" in line]
    assert len(lines) == 2, lines
    held.close()


# -- with workers: counted in each, summed in /stats --------------------------------------


def test_refusals_and_places_are_summed_over_workers(redis_server):
    server = WorkersServer("--redis", redis_server.url, "--max-per-ip", "1",
                           "--interval", "0.2", workers=2).start()
    try:
        held, refused, deadline = [], 0, time.monotonic() + 30
        while len(held) < 2 or refused == 0:  # the kernel spreads them over both workers
            assert time.monotonic() < deadline, server.stats()
            answer = raw_get(server.port, f"/test/w{len(held)}")
            if answer.status == 200:
                held.append(answer)
            else:
                assert answer.status == 429
                refused += 1
                answer.close()
        stats = server.wait_for(
            lambda s: s["limits"]["refused"].get(PER_ADDRESS) == refused, what="summed")
        workers = [w for w in stats["workers"] if "error" not in w]
        assert stats["limits"]["held"] == 2 == sum(w["limits"]["held"] for w in workers)
        assert stats["limits"]["addresses"] == 2  # one entry in each worker's own table
        assert refused == sum(w["limits"]["refused"].get(PER_ADDRESS, 0) for w in workers)
        for answer in held:
            answer.close()
        server.wait_for(lambda s: s["limits"]["held"] == 0, what="released in every worker")
    finally:
        server.stop()

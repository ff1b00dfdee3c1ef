"""What a Redis outage does to a server and its clients: nothing lost silently.

A real ``redis-server`` is cut off, stopped, restarted without its data, and
frozen with SIGSTOP under a real ``python -m comet.server --redis``; real
clients watch what they get.
"""

from __future__ import annotations

import threading

import pytest
import requests

import comet.publish
from comet.broker.redisscripts import PUBLISH, channel, position_key, stream_key
from tests.chunked import open_stream
from tests.realserver import RealServer, free_port, post, subscribed, wait_until
from tests.redisservers import RedisServer, redis_binary_or_skip
from tests.sse import open_events


@pytest.fixture
def server(redis_server):
    srv = RealServer("--redis", redis_server.url, "--interval", "0.2",
                     "--heartbeat", "0.2").start()
    yield srv
    srv.stop()



def subscriber_with_one_message(server, id: str):
    """An SSE subscriber of ``id`` that has got one message: (its stream, that message's id)."""
    events = open_events(server.port, f"/events/{id}")
    subscribed(server)
    first = post(server, f"/send/{id}", b"first")["message"]
    assert events.next_message().id == first
    return events, first


def test_messages_published_while_the_pubsub_connection_was_cut_arrive_once_in_order(
        server, redis_server):
    events, _ = subscriber_with_one_message(server, "g")
    # One pipeline: the cut and five publishes reach Redis before the server can
    # even notice the cut, so they are published while it is away.
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for n in range(5):
        pipe.eval(PUBLISH, 2, position_key("comet"), stream_key("comet", "g"),
                  "fresh", channel("comet", "g"), b"gap %d" % n)
    pipe.execute()
    stats = server.wait_for(lambda s: s["broker"]["reconnects"] == 1 and s["broker"]["up"],
                            what="the reconnect")
    assert stats["broker"]["gap_messages"] == 5 and stats["broker"]["resubscribed_ids"] == 1
    after = comet.publish.publish(client, "g", "after")
    got = [events.next_message() for _ in range(6)]
    assert [e.data for e in got] == [*(f"gap {n}" for n in range(5)), "after"]
    assert got[-1].id == after
    events.close()


def test_redis_stopped_means_503s_held_streams_stay_and_a_data_loss_is_told(
        server, redis_server):
    events, last = subscriber_with_one_message(server, "d")
    redis_server.kill()
    server.wait_for(lambda s: not s["broker"]["up"], what="the broker down")
    for path in ("/send/d", "/broadcast"):
        answer = requests.post(server.url + path, data=b"nowhere", timeout=10)
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    batch = requests.post(server.url + "/send", data=b'{"id": "d", "message": "x"}\n',
                          headers={"Content-Type": "application/x-ndjson"}, timeout=10)
    assert batch.status_code == 503
    assert requests.get(server.url + "/health", timeout=10).status_code == 503
    refused = requests.get(server.url + "/events/new", timeout=10)
    assert refused.status_code == 503 and "broker" in refused.text
    assert events.next_event().comments, "the held stream still gets its heartbeats"
    assert server.stats()["connections"]["events"] == 1

    redis_server.restart()  # persistence is off: Redis comes back without its data
    stats = server.wait_for(lambda s: s["broker"]["up"] and s["broker"]["epoch_changes"] == 1,
                            timeout=30, what="the reconnect to a Redis that lost its data")
    assert stats["ends"].get("history lost, resume") == 1
    with pytest.raises(AssertionError, match="stream ended"):
        for _ in range(100):
            events.next_event()
    events.close()
    resumed = open_events(server.port, "/events/d", {"Last-Event-ID": last})
    notice = resumed.next_event()
    while notice.event != "missed":
        notice = resumed.next_event()
    subscribed(server)
    again = post(server, "/send/d", b"again")["message"]
    assert resumed.next_message().id == again
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    resumed.close()


def test_a_frozen_redis_freezes_no_other_connection(server, redis_server):
    stream = open_stream(server.port, "/test/f")
    subscribed(server)
    redis_server.pause()
    try:
        answer = {}
        publisher = threading.Thread(target=lambda: answer.update(status=requests.post(
            server.url + "/send/f", data=b"stuck", timeout=30).status_code))
        publisher.start()
        # While the publish waits on a frozen Redis, the stream keeps ticking.
        ticks = stream.chunks_until(lambda chunk: chunk.startswith(b"Chunk 3 "), limit=20)
        assert ticks
        publisher.join(30)
        assert answer == {"status": 503}
    finally:
        redis_server.resume()
    server.wait_for(lambda s: s["broker"]["up"], timeout=30, what="the broker back")
    post(server, "/send/f", b"thawed")
    assert stream.chunks_until(lambda chunk: b"thawed" in chunk)
    stream.close()


def test_a_redis_restarted_with_its_data_loses_nothing_and_ends_no_connection():
    """Persistence on (append-only file): the epoch survives the restart, so the held
    stream stays, the process resubscribes and delivery goes on; a client that
    resumes from before the outage gets the rest, without a ``missed``."""
    redis_binary_or_skip("redis-server")
    with RedisServer("--appendonly", "yes") as redis_server:
        server = RealServer("--redis", redis_server.url, "--heartbeat", "0.2").start()
        try:
            events, first = subscriber_with_one_message(server, "p")
            redis_server.restart()
            stats = server.wait_for(
                lambda s: s["broker"]["up"] and s["broker"]["reconnects"] == 1,
                timeout=30, what="the reconnect")
            assert stats["broker"]["epoch_changes"] == 0 and stats["ends"] == {}
            after = post(server, "/send/p", b"after")["message"]
            assert events.next_message().id == after  # the same connection, nothing between
            resumed = open_events(server.port, "/events/p", {"Last-Event-ID": first})
            event = resumed.next_event()
            while event.data is None:  # the retry hint, heartbeats
                event = resumed.next_event()
            assert (event.event, event.id) == (None, after)
            resumed.close()
            events.close()
        finally:
            server.stop()


def test_redis_wait_keeps_trying_at_start_until_redis_is_there():
    """``--redis-wait``: a server started before its Redis waits for it (saying so),
    then serves; without the flag the same start is an error (exit 1, tested elsewhere)."""
    redis_binary_or_skip("redis-server")
    port = free_port()
    server = RealServer("--redis", f"redis://127.0.0.1:{port}/0", "--redis-wait", "30")
    starting = threading.Thread(target=server.start, kwargs={"timeout": 60})
    starting.start()
    try:
        wait_until(lambda: any("waiting for Redis" in line for line in server.lines),
                   timeout=30, what="the server waiting for Redis")
        with RedisServer(port=port):
            starting.join(60)
            assert server.port is not None, server.log_text()
            events, _ = subscriber_with_one_message(server, "w")
            events.close()
    finally:
        starting.join(60)
        server.stop()

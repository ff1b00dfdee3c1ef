"""Deliveries by transport, publish-to-socket latency and pub/sub lag, on real servers.

Deliveries by transport must move by exactly what the clients received and
add up to the total; the latency histogram and the lag gauge must hold
plausible values (never below 0, far under a generous bound), and sampling
must bound how many fan-outs are timed: a batch delivered in one turn of the
event loop is timed once, and over Redis no more than one observation per
:data:`~comet.latency.SAMPLE_PERIOD` of the run (plus the first). The pure
parts (the sampler, a message's age from its id) are tested directly, the
id's time against a real Redis's own clock.
"""

from __future__ import annotations

import json
import threading
import time

import gevent
import pytest
import redis
import requests
import websocket

import comet.publish
from comet.broker.redisscripts import SEQ_PER_MS, published_at
from comet.latency import SAMPLE_PERIOD, Sampler, age
from comet.stats import summed
from tests.chunked import open_stream
from tests.realserver import RealServer, post, subscribed, wait_until
from tests.sse import open_events
from tests.test_metrics import scrape

#: a generous bound on any latency measured here: far above a loaded test machine's
PLAUSIBLE = 60.0


def batch(lines: list[tuple[str, str]]) -> bytes:
    return b"".join(json.dumps({"id": id, "message": m}).encode() + b"\n" for id, m in lines)


def publish_batch(server, lines: list[tuple[str, str]]) -> dict:
    answer = requests.post(server.url + "/send", data=batch(lines), timeout=30,
                           headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def ws_connect(server, path: str) -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}", timeout=10)


# -- deliveries by transport ----------------------------------------------------------------

def test_deliveries_are_counted_by_transport_exactly_and_add_up_to_the_total(start_server):
    server = start_server("--interval", "60", "--heartbeat", "60")
    chunks = open_stream(server.port, "/test/t")
    chunks.next_chunk()  # the welcome: logged in
    events = open_events(server.port, "/events/e")
    ws = ws_connect(server, "/ws/w")
    server.wait_for(lambda s: s["connections"]["total"] == 3, what="three connections")
    before = scrape(server)
    for id in ("t", "e", "w"):
        assert post(server, f"/send/{id}", f"to {id}".encode())["delivered"] == 1
    assert post(server, "/send/w", b"again")["delivered"] == 1
    assert post(server, "/broadcast", b"all")["delivered"] == 3
    assert chunks.chunks_until(lambda c: b"all" in c)[0] == b"Recvd msg: to t\n"
    assert [events.next_message().data for _ in range(2)] == ["to e", "all"]
    assert [ws.recv() for _ in range(3)] == ["to w", "again", "all"]
    after = scrape(server)
    got = {t: after("comet_deliveries_total", transport=t)
           - before("comet_deliveries_total", transport=t)
           for t in ("test", "events", "ws", "poll")}
    assert got == {"test": 2, "events": 2, "ws": 3, "poll": 0}
    stats = server.stats()
    assert stats["deliveries"] == {"events": 2, "poll": 0, "test": 2, "ws": 3}
    assert sum(stats["deliveries"].values()) == stats["messages"]["out"] == 7
    ws.close()
    events.close()
    chunks.close()


def test_a_long_poll_answered_by_a_broadcast_counts_as_a_poll_delivery(start_server):
    server = start_server("--poll-timeout", "30")
    answer: dict = {}
    waiting = threading.Thread(target=lambda: answer.update(
        poll=requests.get(server.url + "/poll/p", timeout=30).json()))
    waiting.start()
    server.wait_for(lambda s: s["connections"].get("poll") == 1, what="the poll waiting")
    assert post(server, "/broadcast", b"now")["delivered"] == 1
    waiting.join(30)
    assert [m["data"] for m in answer["poll"]["messages"]] == ["now"]
    stats = server.stats()
    assert stats["deliveries"]["poll"] == 1 == stats["messages"]["out"]


# -- publish-to-socket latency, in process ------------------------------------------------

def test_a_batch_delivered_in_one_turn_is_timed_once(start_server):
    server = start_server("--interval", "60")
    stream = open_stream(server.port, "/test/b")
    stream.next_chunk()
    server.wait_for(lambda s: s["connections"]["test"] == 1, what="the stream")
    answer = publish_batch(server, [("nobody", "first")] + [("b", f"m{n}") for n in range(200)])
    assert answer == {"accepted": 201, "delivered": 200}
    latency = server.stats()["publish_to_socket_seconds"]
    assert latency["count"] == 1, "200 fan-outs in one turn of the loop: one sample"
    assert 0 <= latency["sum"] < PLAUSIBLE
    # The sampler comes due again: a later publish is timed too (a wait on a condition).
    def timed_again() -> bool:
        post(server, "/send/b", b"later")
        return server.stats()["publish_to_socket_seconds"]["count"] == 2

    wait_until(timed_again, what="a second sample")
    found = scrape(server)
    assert found("comet_publish_to_socket_seconds_count") == 2
    assert found("comet_publish_to_socket_seconds_bucket", le="+Inf") == 2
    assert 0 <= found("comet_publish_to_socket_seconds_sum") < PLAUSIBLE
    stream.close()


def test_a_fan_out_that_reached_nobody_is_not_timed(server):
    for n in range(5):
        post(server, f"/send/nobody{n}", b"x")
    post(server, "/broadcast", b"nobody listens")
    assert server.stats()["publish_to_socket_seconds"]["count"] == 0


# -- over Redis: latency from the id, pub/sub lag ---------------------------------------------

BROKERS = {"redis": ("redis_server",), "cluster": ("redis_cluster", "--redis-cluster")}


@pytest.fixture(params=list(BROKERS))
def redis_comet(request):
    fixture, *flags = BROKERS[request.param]
    srv = RealServer("--redis", request.getfixturevalue(fixture).url, *flags,
                     "--interval", "60", "--heartbeat", "60").start()
    yield srv
    srv.stop()


def test_over_redis_latency_and_lag_are_plausible_and_sampling_bounds_them(redis_comet):
    server = redis_comet
    events = open_events(server.port, "/events/r")
    subscribed(server)
    assert server.stats()["broker"]["pubsub_lag_seconds"] is None, "nothing read yet"
    began = time.monotonic()
    messages = 500
    assert publish_batch(server, [("r", f"m{n}") for n in range(messages)])["accepted"] \
        == messages
    stats = server.wait_for(lambda s: s["messages"]["out"] == messages, timeout=30,
                            what="every delivery")
    assert [events.next_message().data for _ in range(messages)][-1] == f"m{messages - 1}"
    elapsed = time.monotonic() - began
    latency = stats["publish_to_socket_seconds"]
    assert 1 <= latency["count"] <= 1 + elapsed / SAMPLE_PERIOD, (latency, elapsed)
    assert 0 <= latency["sum"] < latency["count"] * PLAUSIBLE
    lag = stats["broker"]["pubsub_lag_seconds"]
    assert lag is not None and 0 <= lag < PLAUSIBLE
    found = scrape(server)
    assert found("comet_publish_to_socket_seconds_count") == latency["count"]
    assert found("comet_broker_pubsub_lag_seconds") == lag
    assert found("comet_deliveries_total", transport="events") == messages
    events.close()


def test_a_message_published_straight_into_redis_is_aged_from_its_id(redis_server):
    """``python -m comet.publish`` (no comet server on the way): the delivering server
    still tells the message's age, from the offset Redis's clock gave it."""
    server = RealServer("--redis", redis_server.url, "--interval", "60").start()
    try:
        stream = open_stream(server.port, "/test/d")
        stream.next_chunk()
        subscribed(server)
        comet.publish.publish(redis.Redis.from_url(redis_server.url), "d", "from the backend")
        assert stream.chunks_until(lambda c: b"backend" in c)[-1] == \
            b"Recvd msg: from the backend\n"
        stats = server.wait_for(lambda s: s["publish_to_socket_seconds"]["count"] == 1,
                                what="the sample")
        assert 0 <= stats["publish_to_socket_seconds"]["sum"] < PLAUSIBLE
        assert stats["published"] == {"batch": 0, "broadcast": 0, "notify": 0, "send": 0}
        stream.close()
    finally:
        server.stop()


# -- the pure parts ---------------------------------------------------------------------------

def test_a_sampler_is_due_once_then_again_after_its_period():
    sampler = Sampler(period=0.05)
    assert sampler.due, "the first event is measured"
    for _ in range(3):
        sampler.taken()
        assert not sampler.due, "nothing else in the same turn, however many come"
        wait_until(lambda: sampler.due, what="due again")


def test_a_sampler_is_not_due_again_before_its_period_even_after_a_long_turn():
    """The loop's clock is its last turn's: a timer started from it after a long
    turn (a broadcast to many) would fire at once, and so would a gevent timer
    started again after it fired. Neither may happen: each period counts from now."""
    sampler = Sampler(period=0.01)
    sampler.taken()
    wait_until(lambda: sampler.due, what="due again")  # its timer has fired
    sampler.period = 0.3
    gevent.sleep(0)
    time.sleep(0.4)  # a long turn: nothing else runs, the loop's clock stands still
    sampler.taken()
    for _ in range(3):
        gevent.sleep(0.001)  # turns of the loop, taking next to no time
        assert not sampler.due, "due again long before its period"
    wait_until(lambda: sampler.due, what="due after its period")


def test_an_idle_sampler_runs_no_timer():
    sampler = Sampler(period=0.01)
    assert sampler._timer is None
    sampler.taken()
    wait_until(lambda: sampler.due, what="due again")
    assert not sampler._timer.active, "one shot: nothing runs until the next sample"


def test_age_is_never_below_zero():
    assert age(100.0, 100.25) == 0.25
    assert age(100.0, 99.0) == 0.0, "a clock behind Redis's says nothing, not a negative age"


def test_an_offset_is_its_publish_time_by_redis_clock(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    seconds, micros = client.time()
    assert published_at((seconds * 1000 + micros // 1000) * SEQ_PER_MS) == pytest.approx(
        seconds + (micros // 1000) / 1000)
    assert published_at(1_700_000_000_000 * SEQ_PER_MS + 5) == pytest.approx(1_700_000_000.0)
    # a real offset, given by the publish script, lies between two readings of Redis's clock
    before = client.time()
    message_id = comet.publish.publish(client, "x", "m")
    after = client.time()
    seq = int(message_id.rpartition("-")[2])
    assert before[0] + (before[1] // 1000) / 1000 <= published_at(seq) \
        <= after[0] + after[1] / 1e6


def test_workers_report_the_highest_lag_and_add_up_the_rest():
    one = {"broker": {"pubsub_lag_seconds": 0.002, "reconnects": 1},
           "deliveries": {"events": 2, "ws": 1}}
    two = {"broker": {"pubsub_lag_seconds": 0.5, "reconnects": 0},
           "deliveries": {"events": 3, "test": 4}}
    idle = {"broker": {"pubsub_lag_seconds": None, "reconnects": 0}, "deliveries": {}}
    total = summed([one, two, idle])
    assert total["broker"] == {"pubsub_lag_seconds": 0.5, "reconnects": 1}
    assert total["deliveries"] == {"events": 5, "test": 4, "ws": 1}
    assert summed([idle])["broker"]["pubsub_lag_seconds"] is None

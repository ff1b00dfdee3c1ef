"""POST /notify: a bulk notify, one ``{"id", "message"}`` a line, each line's message to
every subscriber of its id; on real servers with each broker, and two workers over Redis."""

from __future__ import annotations

import json

import pytest
import requests
import websocket

from tests.realserver import RealServer, post, subscribed
from tests.sse import open_events
from tests.test_subscriptions import broker_args, follow
from tests.workerservers import WorkersServer, one_id_on_every_worker

NDJSON = {"Content-Type": "application/x-ndjson"}


def lines(*items: tuple[str, str]) -> bytes:
    return b"".join(json.dumps({"id": id, "message": message}).encode() + b"\n"
                    for id, message in items)


def bulk(server, *items: tuple[str, str]) -> dict:
    answer = requests.post(f"{server.url}/notify", data=lines(*items), headers=NDJSON,
                           timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def server(request):
    srv = RealServer(*broker_args(request, request.param)).start()
    srv.kind = request.param
    yield srv
    srv.stop()


def test_each_line_reaches_every_follower_of_its_id_once_and_in_line_order(server):
    assert follow(server, "fan1", "star", "moon").status_code == 200
    assert follow(server, "fan2", "star").status_code == 200
    events = open_events(server.port, "/events/fan1")
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/fan2", timeout=10)
    if server.kind != "memory":
        subscribed(server, 2)
    answer = bulk(server, ("star", "one"), ("moon", "two"), ("nobody", "three"),
                  ("star", "four"))
    assert answer["accepted"] == 4 and answer["subscribers"] == 5
    assert answer["delivered"] == (5 if server.kind == "memory" else None)
    assert [events.next_message().data for _ in range(3)] == ["one", "two", "four"]
    assert [ws.recv() for _ in range(2)] == ["one", "four"]
    for id in ("fan1", "fan2"):  # the next message each gets is this one: no copy
        post(server, f"/send/{id}", f"after {id}".encode())
    assert events.next_message().data == "after fan1"
    assert ws.recv() == "after fan2"
    stats = server.stats()
    assert stats["subscriptions"]["notifies"] == 4 and stats["published"]["notify"] == 5
    events.close()
    ws.close()


def test_ids_without_followers_count_nothing_and_send_nothing(start_server):
    srv = start_server()
    assert bulk(srv, ("nobody", "x"), ("nor.them", "y")) == {
        "accepted": 2, "subscribers": 0, "delivered": 0}
    stats = srv.stats()
    assert stats["subscriptions"]["notifies"] == 2 and stats["published"]["notify"] == 0


@pytest.mark.parametrize(("body", "headers", "status", "why"), [
    (lines(("star", "x")), {"Content-Type": "text/plain"}, 415, "POST /notify takes"),
    (b'{"id": "star", "message": "x"}\nnot json\n', NDJSON, 400, "line 2: not JSON"),
    (lines(("star", "x"), ("bad id", "y")), NDJSON, 400, "line 2: bad id"),
    (lines(("star", "x"), ("star", "m" * 300)), NDJSON, 413, "over the 200 byte limit"),
    (b"\n\n", NDJSON, 400, "empty batch"),
])
def test_a_bad_body_is_refused_whole_with_a_4xx_and_a_log_line(start_server, body, headers,
                                                                 status, why):
    srv = start_server("--max-batch", "200")
    follow(srv, "fan", "star")
    events = open_events(srv.port, "/events/fan")
    answer = requests.post(f"{srv.url}/notify", data=body, headers=headers, timeout=10)
    assert answer.status_code == status and why in answer.text, answer.text
    srv.wait_for_log(f"{status} POST /notify")
    post(srv, "/send/fan", b"marker")
    assert events.next_message().data == "marker"  # nothing of the refused batch came first
    stats = srv.stats()
    assert stats["subscriptions"]["notifies"] == 0 and stats["published"]["notify"] == 0
    events.close()


def test_the_rate_limit_counts_a_message_a_line_and_keys_are_required():
    key = "bulk-key-0123456789"
    srv = RealServer("--publish-rate-per-key", "0.01", env={"COMET_PUBLISH_KEYS": key}).start()
    try:
        body = lines(("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"))
        refused = requests.post(f"{srv.url}/notify", data=body, headers=NDJSON, timeout=10)
        assert refused.status_code == 401
        auth = {**NDJSON, "Authorization": f"Bearer {key}"}
        taken = requests.post(f"{srv.url}/notify", data=lines(("a", "1")), headers=auth,
                              timeout=10)
        assert taken.status_code == 200, taken.text
        over = requests.post(f"{srv.url}/notify", data=body, headers=auth, timeout=10)
        assert over.status_code == 429 and "Retry-After" in over.headers
        assert list(srv.stats()["publishes_limited"].values()) == [4]
    finally:
        srv.stop()


def test_across_two_workers_in_line_order_once_and_a_resume_replays_it(redis_server):
    srv = WorkersServer("--redis", redis_server.url).start()
    try:
        follow(srv, "fan1", "star", "moon")
        follow(srv, "fan2", "moon")
        streams = one_id_on_every_worker(srv, "/events/fan1")
        fan2 = open_events(srv.port, "/events/fan2")
        srv.wait_for(lambda s: s["broker"]["subscribed_ids"] == 3, what="fan1 on both, fan2")
        answer = bulk(srv, ("star", "one"), ("moon", "two"), ("star", "three"))
        assert answer == {"accepted": 3, "subscribers": 4, "delivered": None}
        post(srv, "/send/fan1", b"after")
        post(srv, "/send/fan2", b"after")
        firsts = []
        for stream in streams:
            got = [stream.next_message() for _ in range(4)]
            assert [e.data for e in got] == ["one", "two", "three", "after"]
            firsts.append(got[0].id)
        assert [e.data for e in (fan2.next_message() for _ in range(2))] == ["two", "after"]
        assert srv.stats()["messages"]["out"] == 4 * len(streams) + 2
        resumed = open_events(srv.port, "/events/fan1", {"Last-Event-ID": firsts[0]})
        assert [resumed.next_message().data for _ in range(3)] == ["two", "three", "after"]
        for stream in (*streams, fan2, resumed):
            stream.close()
    finally:
        srv.stop()

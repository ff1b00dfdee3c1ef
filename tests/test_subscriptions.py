"""Subscriptions between users and notify: POST/DELETE /subscribe, GET /subscriptions,
POST /notify, on real servers with each broker (in-process, Redis, Redis Cluster)."""

from __future__ import annotations

import pytest
import redis
import requests
import websocket
from redis.crc import key_slot

from comet.broker.redisgraph import followers_key, following_key
from tests.realserver import RealServer, post, subscribed
from tests.sse import open_events
from tests.workerservers import WorkersServer, one_id_on_every_worker

#: small limits, so that every limit is reached in a few requests
LIMITS = ("--max-following", "5", "--max-followers", "3", "--max-follow-ids", "4",
          "--subscriptions-page", "2")


def broker_args(request, kind: str) -> tuple[str, ...]:
    if kind == "redis":
        return ("--redis", request.getfixturevalue("redis_server").url)
    if kind == "redis-cluster":
        return ("--redis", request.getfixturevalue("redis_cluster").url, "--redis-cluster")
    return ()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def server(request):
    """A server with small limits on each broker; stopped after the test."""
    srv = RealServer(*broker_args(request, request.param), *LIMITS).start()
    srv.kind = request.param
    yield srv
    srv.stop()


def follow(server: RealServer, subscriber: str, *ids: str, method: str = "POST",
           **kw) -> requests.Response:
    query = "&".join(f"to={id}" for id in ids)
    return requests.request(method, f"{server.url}/subscribe/{subscriber}?{query}",
                            timeout=10, **kw)


def listing(server: RealServer, id: str, after: str | None = None) -> dict:
    answer = requests.get(f"{server.url}/subscriptions/{id}",
                          params={"after": after} if after else None, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def every_page(server: RealServer, id: str) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = listing(server, id, after)
        assert page["id"] == id
        pages.append(page["following"])
        after = page["next"]
        if after is None:
            return pages


def test_follow_list_in_pages_and_unfollow(server):
    assert follow(server, "ann", "zed", "bob", "bob").json() == {"id": "ann", "followed": 2}
    assert follow(server, "ann", "bob", "cat", "dan").json() == {"id": "ann", "followed": 2}
    assert every_page(server, "ann") == [["bob", "cat"], ["dan", "zed"]]
    gone = follow(server, "ann", "cat", "eve", method="DELETE")
    assert gone.status_code == 200 and gone.json() == {"id": "ann", "unfollowed": 1}
    assert every_page(server, "ann") == [["bob", "dan"], ["zed"]]
    assert listing(server, "nobody") == {"id": "nobody", "following": [], "next": None}
    assert server.stats()["subscriptions"] == {"follows": 4, "unfollows": 1, "notifies": 0}


def test_a_notify_reaches_each_subscribers_connections_once_and_no_one_else(server):
    for fan in ("fan1", "fan2"):
        assert follow(server, fan, "star").status_code == 200
    events = open_events(server.port, "/events/fan1")
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/fan2", timeout=10)
    bystander = open_events(server.port, "/events/other")
    if server.kind != "memory":
        subscribed(server, 3)
    answer = post(server, "/notify/star", b"now playing")
    assert answer["id"] == "star" and answer["subscribers"] == 2
    assert answer["delivered"] == (2 if server.kind == "memory" else None)
    assert events.next_message().data == "now playing"
    assert ws.recv() == "now playing"
    for id in ("fan1", "fan2", "other"):  # the next message each gets is this one: no copy
        post(server, f"/send/{id}", f"after {id}".encode())
    assert events.next_message().data == "after fan1"
    assert ws.recv() == "after fan2"
    assert bystander.next_message().data == "after other"
    stats = server.stats()
    assert stats["subscriptions"]["notifies"] == 1 and stats["published"]["notify"] == 2
    assert post(server, "/notify/unfollowed", b"x")["subscribers"] == 0
    for stream in (events, bystander):
        stream.close()
    ws.close()


def test_a_resume_after_reconnecting_includes_the_notifications_missed(server):
    follow(server, "fan", "star")
    events = open_events(server.port, "/events/fan")
    if server.kind != "memory":
        subscribed(server, 1)
    post(server, "/notify/star", b"one")
    first = events.next_message()
    assert first.data == "one"
    events.close()
    post(server, "/notify/star", b"two")
    post(server, "/send/fan", b"direct")
    post(server, "/notify/star", b"three")
    resumed = open_events(server.port, "/events/fan", {"Last-Event-ID": first.id})
    got = [resumed.next_message() for _ in range(3)]
    assert [e.data for e in got] == ["two", "direct", "three"]
    assert not any(e.event == "missed" for e in got)
    resumed.close()


def test_limits_refuse_the_whole_request_with_4xx_and_are_counted(server):
    assert follow(server, "ann", "a1", "a2", "a3").status_code == 200
    over = follow(server, "ann", "a3", "a4", "a5", "a6")  # 3 new on top of 3: over 5
    assert over.status_code == 409 and "--max-following" in over.text
    assert every_page(server, "ann") == [["a1", "a2"], ["a3"]]
    for fan in ("f1", "f2", "f3"):
        assert follow(server, fan, "idol").status_code == 200
    full = follow(server, "f4", "free", "idol")
    assert full.status_code == 409 and "'idol'" in full.text and "--max-followers" in full.text
    assert listing(server, "f4")["following"] == []  # not even "free"
    assert post(server, "/notify/free", b"x")["subscribers"] == 0
    many = follow(server, "bob", "b1", "b2", "b3", "b4", "b5")
    assert many.status_code == 400 and "--max-follow-ids" in many.text
    assert server.stats()["limits"]["refused"] == {
        "followees per user": 1, "ids per subscribe request": 1, "subscribers per id": 1}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/subscribe/bad%20id?to=a", 400),
    ("POST", "/subscribe/ann?to=b/ad", 400),
    ("POST", "/subscribe/ann?to=", 400),
    ("POST", "/subscribe/ann", 400),
    ("POST", "/subscribe/ann?to=ann", 400),
    ("DELETE", "/subscribe/ann?to=b%00", 400),
    ("GET", "/subscriptions/" + "x" * 129, 400),
    ("GET", "/subscriptions/ann?after=a%20b", 400),
    ("GET", "/subscriptions/ann?after=a&after=b", 400),
    ("POST", "/notify/bad!", 400),
    ("GET", "/subscribe/ann?to=b", 405),
    ("POST", "/subscriptions/ann", 405),
    ("GET", "/notify/ann", 405),
])
def test_bad_requests_get_a_4xx_and_a_log_line(method, path, status):
    srv = RealServer().start()
    try:
        answer = requests.request(method, srv.url + path, data=b"x", timeout=10)
        assert answer.status_code == status, answer.text
        srv.wait_for_log(f"{status} {method} ")
    finally:
        srv.stop()


def test_the_publisher_key_rule_covers_subscribing_listing_and_notifying():
    key = "subs-key-0123456789"
    srv = RealServer(env={"COMET_PUBLISH_KEYS": key}).start()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        for method, path in (("POST", "/subscribe/ann?to=bob"), ("DELETE", "/subscribe/ann?to=bob"),
                             ("GET", "/subscriptions/ann"), ("POST", "/notify/bob")):
            refused = requests.request(method, srv.url + path, data=b"x", timeout=10)
            assert refused.status_code == 401, (method, path, refused.text)
            wrong = requests.request(method, srv.url + path, data=b"x", timeout=10,
                                     headers={"X-API-Key": "not-the-key-012345"})
            assert wrong.status_code == 403, (method, path, wrong.text)
            taken = requests.request(method, srv.url + path, data=b"x", timeout=10,
                                     headers=auth)
            assert taken.status_code == 200, (method, path, taken.text)
        assert key not in srv.log_text()
    finally:
        srv.stop()


def test_across_two_workers_a_notify_reaches_every_connection_exactly_once(redis_server):
    srv = WorkersServer("--redis", redis_server.url).start()
    try:
        for fan in ("fan1", "fan2"):
            assert follow(srv, fan, "star").status_code == 200
        streams = one_id_on_every_worker(srv, "/events/fan1")
        streams.append(open_events(srv.port, "/events/fan2"))
        srv.wait_for(lambda s: s["broker"]["subscribed_ids"] == 3, what="fan1 on both, fan2")
        assert post(srv, "/notify/star", b"now playing")["subscribers"] == 2
        post(srv, "/send/fan1", b"after")
        post(srv, "/send/fan2", b"after")
        for stream in streams:
            assert stream.next_message().data == "now playing"
            assert stream.next_message().data == "after"  # no second copy in between
        stats = srv.stats()
        assert stats["published"]["notify"] == 2
        assert stats["messages"]["out"] == 2 * len(streams)
        for stream in streams:
            stream.close()
    finally:
        srv.stop()


def test_in_a_redis_cluster_both_sides_of_a_relation_live_in_one_slot(redis_cluster):
    srv = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        ids = [f"id{n}" for n in range(20)]  # ids whose own streams spread over the nodes
        assert follow(srv, "ann", *ids[:10]).json()["followed"] == 10
        assert follow(srv, "bob", *ids[10:]).json()["followed"] == 10
        keys = [following_key("comet", "ann"), following_key("comet", "bob"),
                *(followers_key("comet", id) for id in ids)]
        assert len({key_slot(key.encode()) for key in keys}) == 1
        client = redis.RedisCluster.from_url(redis_cluster.url)
        try:
            assert client.zrange(keys[0], 0, -1) == sorted(id.encode() for id in ids[:10])
            assert client.smembers(followers_key("comet", "id15")) == {b"bob"}
            follow(srv, "bob", *ids[10:15], method="DELETE")
            assert not client.exists(followers_key("comet", "id12"))  # no member, no key
        finally:
            client.close()
    finally:
        srv.stop()

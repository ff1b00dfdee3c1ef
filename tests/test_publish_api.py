"""``comet.publish``: a backend publishes straight into Redis, as a server would.

A real redis-server and a real comet server on it: what a backend publishes
reaches the server's subscribers with ids of the same epoch and offsets in
order, and a bad id is refused before anything is sent.
"""

from __future__ import annotations

import pytest
import redis

import comet.publish
from comet.broker import cursor
from tests.realserver import RealServer, subscribed
from tests.sse import open_events


def test_a_backend_publishes_to_ids_and_to_everyone_with_the_servers_ids(redis_server):
    server = RealServer("--redis", redis_server.url).start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        a, b = (open_events(server.port, f"/events/{id}") for id in ("a", "b"))
        subscribed(server, 2)
        one = comet.publish.publish(client, "a", "to a")
        many = comet.publish.publish_many(client, [("b", b"to b"), ("a", "again")])
        every = comet.publish.broadcast(client, "to all")
        assert len({id.rpartition("-")[0] for id in (one, *many, every)}) == 1
        offsets = [int(id.rpartition("-")[2]) for id in (one, *many, every)]
        assert offsets == sorted(offsets) and len(set(offsets)) == 4
        assert [(e.id, e.data) for e in (a.next_message() for _ in range(3))] == [
            (one, "to a"), (many[1], "again"), (every, "to all")]
        assert [(e.id, e.data) for e in (b.next_message() for _ in range(2))] == [
            (many[0], "to b"), (every, "to all")]
        a.close()
        b.close()
    finally:
        server.stop()


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "brace{d}", None])
def test_a_bad_id_is_refused_before_anything_is_sent(redis_server, bad):
    client = redis.Redis.from_url(redis_server.url)
    with pytest.raises(ValueError, match="bad id"):
        comet.publish.publish_many(client, [("fine", "first"), (bad, "second")])
    assert client.keys("*") == []  # not even the good one went


def test_a_backend_publishes_into_a_cluster_with_the_servers_bounds_and_ids(redis_cluster):
    server = RealServer("--redis", redis_cluster.url, "--redis-cluster", "--history", "2").start()
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        a = open_events(server.port, "/events/a?id=b")
        subscribed(server, 2)
        one = comet.publish.publish(client, "a", "to a")
        many = comet.publish.publish_many(client, [("b", b"to b"), ("a", "again")])
        every = comet.publish.broadcast(client, "to all")
        got = [a.next_message() for _ in range(4)]
        assert sorted(e.data for e in got) == ["again", "to a", "to all", "to b"]
        # each event's id holds the connection's place in every stream it reads
        last = cursor.parse(got[-1].id)
        assert {f"{e}-{s}" for e, s in last.values()} == {many[0], many[1], every}
        assert int(one.rpartition("-")[2]) < int(many[1].rpartition("-")[2])
        # the servers' bound (--history 2) holds for a backend's publish too
        comet.publish.publish_many(client, [("a", "3"), ("a", "4")])
        assert client.xlen("comet:{a}:h") == 1 + 2  # the epoch entry and two messages
        a.close()
    finally:
        client.close()
        server.stop()

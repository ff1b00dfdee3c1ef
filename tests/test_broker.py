"""The Broker contract, as a conformance suite every broker runs (docs/design.rst, "Broker").

Each test takes a ``broker`` built by one of :data:`BROKERS` with a history of
3 messages per id, started with a recording ``deliver``: the in-process broker,
the Redis broker on a real ``redis-server`` of the test's own, and the Redis
Cluster broker on a real three-node cluster. A broker that spans processes
delivers a publish when it comes back from Redis, so the tests wait for
deliveries (:meth:`Delivered.wait`) and compare messages by id.

Where positions are per stream (the cluster: ``broker.vector``), a client's
position is a vector, and messages of different streams have no order but
their offsets' (each node's clock): :func:`start_of` and :func:`after` give
positions either way, and orders are compared per stream there.
"""

from __future__ import annotations

from collections import Counter

import pytest

from comet.broker import Message, parse_position
from comet.broker import cursor as positions
from comet.broker.graph import FOLLOWERS, FOLLOWING, GraphFull
from comet.broker.memory import MemoryBroker, MemoryHistory
from tests.realserver import wait_until


class Delivered:
    """The hub's side of the contract: records each call, says one connection took it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, Message]] = []

    def __call__(self, id: str | None, message: Message) -> int:
        self.calls.append((id, message))
        return 1

    def wait(self, count: int) -> list[tuple[str | None, str]]:
        """Once ``count`` deliveries arrived: each as (id, message id)."""
        wait_until(lambda: len(self.calls) >= count, what=f"{count} deliveries")
        return [(id, message.id) for id, message in self.calls]


def memory_broker(request) -> MemoryBroker:
    return MemoryBroker(MemoryHistory(per_id=3, ttl=60.0))


def redis_broker(request):
    from comet.broker.redis import RedisBroker
    server = request.getfixturevalue("redis_server")
    broker = RedisBroker(server.url, history=3, history_ttl=60.0)
    broker.pause_writes = lambda ms: pause_writes([server.url], ms)
    return broker


def redis_cluster_broker(request):
    from comet.broker.rediscluster import RedisClusterBroker
    cluster = request.getfixturevalue("redis_cluster")
    broker = RedisClusterBroker(cluster.url, history=3, history_ttl=60.0)
    broker.pause_writes = lambda ms: pause_writes([node.url for node in cluster.nodes], ms)
    return broker


def pause_writes(urls: list[str], ms: int) -> None:
    """``CLIENT PAUSE ms WRITE`` on each Redis: write scripts wait there that long, so
    calls are surely in flight together (on an idle machine a reply can be back before
    the caller's greenlet yields, and then nothing ever meets in flight)."""
    import redis
    for url in urls:
        with redis.Redis.from_url(url) as admin:
            admin.client_pause(ms, all=False)


BROKERS = {"memory": memory_broker, "redis": redis_broker, "redis-cluster": redis_cluster_broker}


def start_of(broker, ids: list[str]) -> str:
    """Where a client logging in as ``ids`` now begins."""
    return broker.replay(ids, None).start if broker.vector else broker.position()


def after(broker, start: str, *messages: Message) -> str:
    """The position of a client that began at ``start`` and then got ``messages``."""
    if not broker.vector:
        return messages[-1].id
    cursor = positions.Cursor(positions.parse(start))
    for message in messages:
        cursor.advance(message)
    return cursor.text()


def in_order(broker, messages) -> list:
    """Messages as a broker's order promises them: all in one order, or per stream."""
    if not broker.vector:
        return [m.id for m in messages]
    return sorted((m.stream, m.seq, m.id) for m in messages)


class Held:
    """The hub's router as a broker sees it: how many connections hold each id here."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self) -> list[str]:
        return [id for id, count in self.counts.items() if count > 0]


def subscribe(broker, ids: list[str]) -> None:
    """A login as ``ids``, as the hub does it: the router first, then the broker."""
    new = [id for id in ids if broker.held.counts[id] == 0]
    broker.held.counts.update(ids)
    broker.subscribe(ids, new)


def unsubscribe(broker, ids: list[str]) -> None:
    """That login's logout: the ids left with no connection are unsubscribed."""
    broker.held.counts.subtract(ids)
    broker.unsubscribe([id for id in ids if broker.held.counts[id] == 0])


@pytest.fixture(params=sorted(BROKERS))
def broker(request):
    broker = BROKERS[request.param](request)
    broker.delivered = Delivered()
    broker.held = Held()
    broker.start(broker.delivered, None, broker.held)
    yield broker
    broker.close()


def test_a_publish_to_a_subscribed_id_is_delivered_here_with_its_id(broker):
    subscribe(broker, ["a"])
    message, count = broker.publish("a", b"hello")
    assert broker.delivered.wait(1) == [("a", message.id)]
    assert message.data == b"hello" and broker.delivered.calls[0][1].data == b"hello"
    assert count == (None if broker.spans_processes else 1)


def test_a_broadcast_is_delivered_as_none(broker):
    message, _ = broker.broadcast(b"all")
    assert broker.delivered.wait(1) == [(None, message.id)]


def test_message_ids_share_an_epoch_and_count_up(broker):
    subscribe(broker, ["a", "b"])
    messages = [broker.publish(id, b"x")[0] for id in ("a", "b", "a")]
    streams = [[messages[0], messages[2]], [messages[1]]]
    if not broker.vector:  # one counter for every id
        streams = [messages]
        assert broker.position() == messages[-1].id
    for stream in streams:
        epochs = {m.id.rpartition("-")[0] for m in stream}
        assert len(epochs) == 1
        epoch = epochs.pop()
        offsets = [parse_position(m.id, epoch) for m in stream]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(stream)
        assert [m.seq for m in stream] == offsets


def test_replay_gives_the_ids_and_the_broadcasts_after_the_last_id_oldest_first(broker):
    subscribe(broker, ["a", "b"])
    start = start_of(broker, ["a"])
    a1 = broker.publish("a", b"a1")[0]
    broker.publish("b", b"b1")
    every = broker.broadcast(b"all")[0]
    a2 = broker.publish("a", b"a2")[0]
    replay = broker.replay(["a"], start)
    assert in_order(broker, replay.messages) == in_order(broker, [a1, every, a2])
    assert replay.missed is False
    assert [m.data for m in broker.replay(["a"], after(broker, start, a1, every)).messages] \
        == [b"a2"]


def test_a_publish_that_reaches_nobody_still_lands_in_history(broker):
    start = start_of(broker, ["nobody-here"])
    message, _ = broker.publish("nobody-here", b"kept")
    assert [m.id for m in broker.replay(["nobody-here"], start).messages] == [message.id]


def test_an_id_of_another_epoch_is_missed_and_what_is_kept_follows(broker):
    subscribe(broker, ["a"])
    kept = broker.publish("a", b"kept")[0]
    replay = broker.replay(["a"], "not-an-epoch-7")
    assert replay.missed is True
    assert [m.id for m in replay.messages] == [kept.id]
    epoch = kept.id.rpartition("-")[0]
    if broker.vector:
        assert positions.parse(replay.start)["a"] == (epoch, 0)
    else:
        assert parse_position(replay.start, epoch) == 0


def test_history_beyond_its_bound_is_reported_missed_never_silently_gone(broker):
    subscribe(broker, ["a"])
    start = start_of(broker, ["a"])
    sent = [broker.publish("a", b"%d" % n)[0] for n in range(5)]  # the bound is 3
    replay = broker.replay(["a"], start)
    assert replay.missed is True
    assert [m.id for m in replay.messages] == [m.id for m in sent[-3:]]
    # from there on all is kept
    assert broker.replay(["a"], after(broker, start, *sent[:2])).missed is False


def test_unsubscribe_and_subscribe_again_keep_delivery_and_history_whole(broker):
    subscribe(broker, ["a"])
    unsubscribe(broker, ["a"])
    subscribe(broker, ["a"])
    message, _ = broker.publish("a", b"again")
    assert broker.delivered.wait(1) == [("a", message.id)]


def test_a_batch_is_published_in_order_with_ids_that_count_up(broker):
    subscribe(broker, ["a", "b"])
    published = broker.publish_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
    ids = [message.id for message, _ in published]
    assert [message.data for message, _ in published] == [b"1", b"2", b"3"]
    delivered = broker.delivered.wait(3)
    expected = list(zip(["a", "b", "a"], ids, strict=True))
    if broker.vector:  # two nodes: no order between a and b
        delivered, expected = sorted(delivered), sorted(expected)
    assert delivered == expected
    replayed = broker.replay(["a", "b"], "x-0").messages
    assert in_order(broker, replayed) == in_order(broker, [m for m, _ in published])


def test_concurrent_publishers_each_get_their_own_messages_in_their_order(broker):
    """Publishes that meet in flight may share a call; each caller still gets its own
    messages, and each publisher's order is kept (history is 3: each id's last 3)."""
    import gevent

    publishers, each = 20, 5

    def publish_in_turn(n: int) -> list[Message]:
        return [broker.publish(f"p{n}", f"{n}.{k}".encode())[0] for k in range(each)]

    if hasattr(broker, "pause_writes"):
        broker.pause_writes(200)  # the first publish waits in Redis; the others meet it
    jobs = [gevent.spawn(publish_in_turn, n) for n in range(publishers)]
    gevent.joinall(jobs, raise_error=True)
    for n, job in enumerate(jobs):
        sent = job.value
        assert [m.data for m in sent] == [f"{n}.{k}".encode() for k in range(each)]
        assert [m.seq for m in sent] == sorted(m.seq for m in sent)
        kept = broker.replay([f"p{n}"], "x-0").messages
        assert [m.data for m in kept] == [m.data for m in sent[-3:]]
    assert len({m.id for job in jobs for m in job.value}) == publishers * each
    calls = broker.snapshot().get("publish_calls")
    if calls is not None:  # Redis: the ones that met in flight went together
        assert calls < publishers * each


def test_a_publish_to_an_id_not_subscribed_here_is_not_delivered_here(broker):
    if not broker.spans_processes:
        pytest.skip("in one process every id is delivered here (the router finds nobody)")
    subscribe(broker, ["a"])
    broker.publish("elsewhere", b"not here")
    marker, _ = broker.publish("a", b"here")
    assert broker.delivered.wait(1) == [("a", marker.id)]


def test_unsubscribed_ids_are_no_longer_delivered_here(broker):
    if not broker.spans_processes:
        pytest.skip("in one process every id is delivered here (the router finds nobody)")
    subscribe(broker, ["a", "b"])
    unsubscribe(broker, ["a"])
    broker.publish("a", b"gone")
    marker, _ = broker.publish("b", b"still")
    assert broker.delivered.wait(1) == [("b", marker.id)]


# -- the graph of subscriptions (Broker.graph) --------------------------------------------


def test_the_graph_keeps_both_sides_and_pages_in_id_order(broker):
    graph = broker.graph
    assert graph.follow("ann", ["zed", "bob", "cat"], 10, 10) == 3
    assert graph.follow("ann", ["bob", "dan"], 10, 10) == 1
    assert graph.follow("eve", ["bob"], 10, 10) == 1
    assert sorted(graph.followers("bob")) == ["ann", "eve"]
    assert graph.following("ann", None, 3) == (["bob", "cat", "dan"], "dan")
    assert graph.following("ann", "dan", 3) == (["zed"], None)
    assert graph.following("ann", "bz", 2) == (["cat", "dan"], "dan")  # a cursor since gone
    assert graph.unfollow("ann", ["bob", "nobody"]) == 1
    assert graph.followers("bob") == ["eve"]
    assert graph.following("ann", None, 10) == (["cat", "dan", "zed"], None)
    assert graph.following("nobody", None, 10) == ([], None)


def test_a_follow_over_either_limit_changes_nothing(broker):
    graph = broker.graph
    graph.follow("ann", ["a", "b"], 3, 2)
    with pytest.raises(GraphFull) as over:
        graph.follow("ann", ["b", "c", "d"], 3, 2)
    assert (over.value.limit, over.value.id) == (FOLLOWING, "ann")
    graph.follow("bob", ["a"], 3, 2)
    with pytest.raises(GraphFull) as full:
        graph.follow("cat", ["new", "a"], 3, 2)
    assert (full.value.limit, full.value.id) == (FOLLOWERS, "a")
    assert graph.following("ann", None, 10) == (["a", "b"], None)
    assert graph.following("cat", None, 10) == ([], None)
    assert graph.followers("new") == []


def test_the_followers_of_many_ids_come_in_their_order_in_one_read(broker):
    graph = broker.graph
    graph.follow("ann", ["star", "moon"], 10, 10)
    graph.follow("bob", ["star"], 10, 10)
    found = graph.followers_many(["star", "nobody", "moon", "star"])
    assert [sorted(followers) for followers in found] == [
        ["ann", "bob"], [], ["ann"], ["ann", "bob"]]
    assert graph.followers_many([]) == []
    graph.unfollow("bob", ["star"])
    assert graph.followers_many(["star"]) == [["ann"]]

"""Servers on a real three-node Redis Cluster: sharded delivery, resume anywhere, slots moving.

Two ``python -m comet.server --redis URL --redis-cluster`` processes stand for
two machines; the cluster is the session's (tests/redisservers.py), reset
before each test. Ids are picked on purpose on different nodes, so that a
connection reads streams of several nodes: its position is a vector
(comet/broker/cursor.py), and resuming must give every stream's missed
messages exactly once, whatever order the nodes delivered them in.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import signal

import pytest
import requests
from redis.crc import key_slot

from comet.broker.redisscripts import channel
from tests.realserver import RealServer, post, subscribed
from tests.sse import open_events
from tests.workerservers import WorkersServer, events_on_every_worker


def node_of(cluster, id: str) -> int:
    return cluster.slot_owner(key_slot(channel("comet", id).encode()))


def ids_on_distinct_nodes(cluster, count: int = 3) -> list[str]:
    """``count`` ids whose streams live on ``count`` different nodes."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        id = f"id{n}"
        found.setdefault(node_of(cluster, id), id)
        n += 1
    return list(found.values())


@pytest.fixture(params=["on", "off"], ids=["hibernate", "plain"])
def pair(request, redis_cluster):
    """Two servers on the cluster, both in the same connection life; stopped after."""
    servers = [RealServer("--redis", redis_cluster.url, "--redis-cluster", "--interval", "0.2",
                          "--poll-timeout", "1", "--hibernate", request.param).start()
               for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_a_client_of_ids_on_three_nodes_resumes_on_the_other_server_exactly(
        pair, redis_cluster):
    one, two = pair
    a, b, c = ids_on_distinct_nodes(redis_cluster)
    path = f"/events/{a}?id={b}&id={c}"
    events = open_events(one.port, path)
    subscribed(one, 3)
    post(two, f"/send/{b}", b"b1")
    first = events.next_message()
    assert first.data == "b1"
    events.close()
    while_away = [(id, b"%s-%d" % (id.encode(), n)) for n in range(3) for id in (a, b, c)]
    for id, data in while_away:
        post(two, f"/send/{id}", data)
    post(two, "/broadcast", b"all")
    post(two, "/send/not-theirs", b"no")
    resumed = open_events(two.port, path, {"Last-Event-ID": first.id})
    got = [resumed.next_message() for _ in range(len(while_away) + 1)]
    assert sorted(e.data for e in got) == sorted([d.decode() for _, d in while_away] + ["all"])
    for id in (a, b, c):  # each stream in its own order
        assert [e.data for e in got if e.data.startswith(id + "-")] == \
            [f"{id}-{n}" for n in range(3)]
    assert not any(e.event == "missed" for e in got)
    post(one, f"/send/{c}", b"later")
    assert resumed.next_message().data == "later"
    resumed.close()


def test_a_connection_keeps_its_messages_while_its_slot_moves_to_another_node(redis_cluster):
    server = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        events = open_events(server.port, "/events/mover")
        subscribed(server, 1)
        post(server, "/send/mover", b"before")
        assert events.next_message().data == "before"
        slot = key_slot(channel("comet", "mover").encode())
        source = redis_cluster.slot_owner(slot)
        redis_cluster.move_slot(slot, (source + 1) % 3)
        server.wait_for(lambda s: s["broker"]["moved_ids"] >= 1, what="the id followed")
        for n in range(3):
            post(server, "/send/mover", b"after %d" % n)
        assert [events.next_message().data for _ in range(3)] == [f"after {n}"
                                                                  for n in range(3)]
        broker = server.stats()["broker"]
        assert broker["up"] is True and broker["moved_ids"] == 1
        post(server, "/send/mover", b"last")  # nothing of before the move came again
        assert events.next_message().data == "last"
        events.close()
    finally:
        server.stop()


def test_a_node_that_restarted_empty_ends_its_connections_and_they_learn_they_missed(
        redis_cluster):
    server = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        lonely = next(id for id in (f"n{n}" for n in range(100))
                      if node_of(redis_cluster, id) != node_of(redis_cluster, "*"))
        events = open_events(server.port, f"/events/{lonely}")
        subscribed(server, 1)
        post(server, f"/send/{lonely}", b"kept once")
        seen = events.next_message()
        node = redis_cluster.nodes[node_of(redis_cluster, lonely)]
        node.kill()
        node.restart()  # no persistence: its streams are gone
        redis_cluster.wait_ok()
        with pytest.raises(AssertionError, match="stream ended"):
            while True:  # ends (1012, history lost) once the server sees the restart
                events.next_event()
        server.wait_for(lambda s: s["broker"]["up"], what="the node back")
        resumed = open_events(server.port, f"/events/{lonely}", {"Last-Event-ID": seen.id})
        notice = resumed.next_event()
        while notice.retry is not None and notice.event is None:
            notice = resumed.next_event()  # the retry hint first
        assert notice.event == "missed"  # not silently resumed
        resumed.close()
    finally:
        server.stop()


def test_a_publish_to_a_node_that_is_down_is_a_503_and_others_still_work(redis_cluster):
    # a cluster that serves the slots it still has (by default Redis refuses everything
    # once some slot has no node: cluster-require-full-coverage)
    for index in range(3):
        redis_cluster._admin(index).config_set("cluster-require-full-coverage", "no")
    server = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        down_id, up_id = next((x, y) for x, y in ((f"d{n}", f"u{n}") for n in range(100))
                              if node_of(redis_cluster, x) != node_of(redis_cluster, y))
        redis_cluster.nodes[node_of(redis_cluster, down_id)].pause()
        answer = requests.post(f"{server.url}/send/{down_id}", data=b"x", timeout=30)
        assert answer.status_code == 503 and "Retry-After" in answer.headers
        assert requests.post(f"{server.url}/send/{up_id}", data=b"y",
                             timeout=30).status_code == 200
    finally:
        for node in redis_cluster.nodes:
            if node.paused:
                node.resume()
        for index in range(3):
            redis_cluster._admin(index).config_set("cluster-require-full-coverage", "yes")
        server.stop()


def test_ids_spread_evenly_over_the_shards(redis_cluster):
    """The whole id is the hash tag: 30,000 ids land within a few percent of a third
    on each node (a short tag would crowd some nodes; centrifuge#554)."""
    owners = redis_cluster.owners()
    counts = collections.Counter(owners[key_slot(channel("comet", f"user{n}").encode())]
                                 for n in range(30_000))
    assert len(counts) == 3
    assert max(counts.values()) / min(counts.values()) < 1.05, counts


def test_a_crowd_of_logins_at_once_opens_one_pubsub_connection_per_node(redis_cluster):
    server = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        with concurrent.futures.ThreadPoolExecutor(60) as pool:  # all at once
            crowd = list(pool.map(lambda n: open_events(server.port, f"/events/crowd{n}"),
                                  range(60)))
        subscribed(server, 60)
        for index in range(3):  # this server's pub/sub connections, per node
            clients = redis_cluster._admin(index).client_list(_type="pubsub")
            assert len(clients) == 1, clients
        for events in crowd:
            events.close()
    finally:
        server.stop()


def test_two_workers_on_the_cluster_deliver_once_and_a_killed_ones_clients_resume_exactly(
        redis_cluster):
    srv = WorkersServer("--redis", redis_cluster.url, "--redis-cluster", workers=2).start()
    events = []
    try:
        events = events_on_every_worker(srv)
        first = {}
        for n, stream in enumerate(events):
            post(srv, f"/send/e{n}", b"first")
            first[n] = stream.next_message()
            assert first[n].data == "first"
        victim = srv.stats()["workers"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        srv.wait_for_log(f"worker 1 (pid {victim['pid']}) died")
        for n in range(len(events)):
            for k in range(3):
                post(srv, f"/send/e{n}", b"m%d" % k)
        post(srv, "/broadcast", b"to all")
        for n, stream in enumerate(events):
            stream.close()
            resumed = open_events(srv.port, f"/events/e{n}", {"Last-Event-ID": first[n].id})
            got = [resumed.next_message().data for _ in range(4)]
            assert sorted(got) == ["m0", "m1", "m2", "to all"], f"subscriber e{n}"
            assert [d for d in got if d != "to all"] == ["m0", "m1", "m2"]
            post(srv, f"/send/e{n}", b"later")
            assert resumed.next_message().data == "later"  # and nothing twice before it
            resumed.close()
    finally:
        for stream in events:
            stream.close()
        srv.stop()

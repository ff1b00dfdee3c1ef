"""The Redis harness itself (:mod:`tests.redisservers`), against real redis-server processes.

The broker's tests will trust these servers to restart empty, stall on demand and
move slots; each of those is shown here first, with real processes and redis-py,
never a mock. Waits, not timing assertions: a paused server is shown by a client's
own timeout firing, not by measuring how long anything took.
"""

from __future__ import annotations

import os
import socket
from itertools import count

import pytest

from tests.redisservers import (
    HOST,
    SLOTS,
    PortTaken,
    RedisCluster,
    RedisServer,
    redis,
    redis_binary_or_skip,
    retries,
)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- one server ---------------------------------------------------------------------------

def test_a_server_answers_ping_and_stop_leaves_no_process_and_no_dir():
    redis_binary_or_skip("redis-server")
    server = RedisServer().start()
    pid, folder = server.pid, server.dir
    assert server.client().ping()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.stop()
    assert pid_gone(pid)
    assert not folder.exists()


def test_restart_keeps_the_port_and_loses_the_data(redis_server):
    redis_server.client().set("kept?", "no")
    port, old_pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port and pid_gone(old_pid)
    assert redis_server.client().get("kept?") is None
    assert redis_server.client().dbsize() == 0


def test_a_killed_server_is_gone_and_restarts_on_its_port(redis_server):
    pid, port = redis_server.pid, redis_server.port
    redis_server.kill()
    assert pid_gone(pid) and not redis_server.alive
    with pytest.raises(redis.ConnectionError):
        redis_server.client(socket_connect_timeout=1).ping()
    redis_server.restart()
    assert redis_server.port == port and redis_server.client().ping()


def test_a_paused_server_times_a_ping_out_and_answers_after_resume(redis_server):
    stalled = redis_server.client(socket_timeout=0.2)
    redis_server.pause()
    with pytest.raises(redis.TimeoutError):
        stalled.ping()
    redis_server.resume()
    assert redis_server.client(socket_timeout=5).ping()


def test_stop_ends_a_paused_server():
    redis_binary_or_skip("redis-server")
    server = RedisServer().start()
    pid = server.pid
    server.pause()
    server.stop()
    assert pid_gone(pid)


def test_a_password_is_required_and_carried_by_the_url():
    redis_binary_or_skip("redis-server")
    with RedisServer(password="secret") as server:
        assert server.url == f"redis://:secret@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=HOST, port=server.port, retry=retries()).ping()
        assert redis.Redis.from_url(server.url).ping()


def test_the_unix_socket_reaches_the_same_server():
    redis_binary_or_skip("redis-server")
    with RedisServer(unixsocket=True) as server:
        assert server.unix_url == f"unix://{server.dir}/redis.sock?db=0"
        redis.Redis.from_url(server.unix_url).set("via", "unix")
        assert server.client().get("via") == b"unix"


def test_a_port_already_taken_is_reported_and_leaves_nothing_running():
    """The failure that the retry with another port is for, caught as such."""
    redis_binary_or_skip("redis-server")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        server = RedisServer(port=taken.getsockname()[1])
        with pytest.raises(PortTaken):
            server.start()
    assert not server.alive and pid_gone(server.pid) and server.dir is None


def test_a_missing_binary_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_binary_or_skip("redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        redis_binary_or_skip("redis-server", "redis-cli")


# -- a cluster ----------------------------------------------------------------------------

def tags_one_per_node(cluster: RedisCluster) -> dict[int, str]:
    """A hash tag whose slot each node serves, as the server computes the slot."""
    ask = cluster.nodes[0].client()
    found: dict[int, str] = {}
    for n in count():
        tag = f"user{n}"
        node = cluster.slot_owner(ask.execute_command("CLUSTER KEYSLOT", f"{{{tag}}}"))
        found.setdefault(node, tag)
        if len(found) == len(cluster.nodes):
            return found


def test_the_cluster_covers_every_slot_and_every_node_agrees(redis_cluster):
    views = [redis_cluster.owners(i) for i in range(len(redis_cluster.nodes))]
    assert len(views) == 3 and all(view == views[0] for view in views)
    assert len(views[0]) == SLOTS and None not in views[0]
    assert set(views[0]) == set(redis_cluster.ids)


def test_keys_with_different_hash_tags_land_on_different_nodes(redis_cluster):
    tags = tags_one_per_node(redis_cluster)
    client = redis_cluster.client()
    for tag in tags.values():
        client.set(f"{{{tag}}}:a", 1)
        client.set(f"{{{tag}}}:b", 2)
    for index, node in enumerate(redis_cluster.nodes):
        tag = tags[index]
        assert sorted(node.client().keys()) == [f"{{{tag}}}:a".encode(),
                                                f"{{{tag}}}:b".encode()]


def test_move_slot_makes_the_old_node_answer_moved_and_redis_py_follow(redis_cluster):
    client = redis_cluster.client()
    key = "{room}:last"
    client.set(key, "hello")
    slot = redis.cluster.key_slot(key.encode())
    old = redis_cluster.slot_owner(slot)
    new = (old + 1) % len(redis_cluster.nodes)
    assert client.get_node_from_key(key).port == redis_cluster.nodes[old].port

    redis_cluster.move_slot(slot, new)

    with pytest.raises(redis.exceptions.MovedError) as moved:
        redis_cluster.nodes[old].client().get(key)
    assert moved.value.slot_id == slot
    assert moved.value.node_addr == (HOST, redis_cluster.nodes[new].port)
    assert client.get(key) == b"hello"          # the stale client followed the MOVED
    assert client.get_node_from_key(key).port == redis_cluster.nodes[new].port


def test_move_slot_carries_every_key_of_the_slot_past_one_batch(redis_cluster):
    client = redis_cluster.client()
    keys = [f"{{bulk}}:{n}" for n in range(250)]
    for key in keys:
        client.set(key, key)
    slot = redis.cluster.key_slot(b"{bulk}")
    new = (redis_cluster.slot_owner(slot) + 1) % len(redis_cluster.nodes)
    redis_cluster.move_slot(slot, new)
    target = redis_cluster.nodes[new].client()
    assert target.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == len(keys)
    assert client.mget(keys) == [key.encode() for key in keys]


def begin_migration(cluster: RedisCluster, slot: int) -> None:
    """Open ``slot``'s migration to the next node and leave it half done, as a test
    that failed inside ``move_slot`` would."""
    source = cluster.slot_owner(slot)
    target = (source + 1) % len(cluster.nodes)
    cluster.nodes[target].client().execute_command(
        "CLUSTER SETSLOT", slot, "IMPORTING", cluster.ids[source])
    cluster.nodes[source].client().execute_command(
        "CLUSTER SETSLOT", slot, "MIGRATING", cluster.ids[target])


def test_reset_undoes_keys_moved_slots_half_migrations_and_a_killed_node(
        redis_cluster_session):
    cluster = redis_cluster_session
    client = cluster.client()
    client.set("{stay}:x", 1)
    slot = redis.cluster.key_slot(b"{stay}")
    cluster.move_slot(slot, (cluster.slot_owner(slot) + 1) % len(cluster.nodes))
    begin_migration(cluster, redis.cluster.key_slot(b"{half}"))
    assert any("[" in cluster.raw(i, "CLUSTER NODES") for i in range(len(cluster.nodes)))
    cluster.nodes[1].kill()

    cluster.reset()

    assert all(node.alive for node in cluster.nodes)
    assert cluster.owners() == cluster.layout
    assert all(node.client().dbsize() == 0 for node in cluster.nodes)
    assert not any("[" in cluster.raw(i, "CLUSTER NODES") for i in range(len(cluster.nodes)))


def test_reset_creates_the_cluster_anew_when_a_node_was_stopped(redis_cluster_session):
    cluster = redis_cluster_session
    cluster.nodes[2].stop()
    cluster.reset()
    assert all(node.alive for node in cluster.nodes)
    assert cluster.client().set("{again}", 1)

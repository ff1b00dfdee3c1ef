"""``python -m comet.graphload`` and :func:`comet.graphload.follow_many`: a graph loaded
straight into a real Redis (and a real three-node cluster) with the servers' own follow
script, then notified along by a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from redis.crc import key_slot

import comet.graphload
from comet.broker.redisgraph import followers_key, following_key
from tests.realserver import RealServer, free_port, post, subscribed
from tests.redisservers import RedisServer, redis_binary_or_skip
from tests.sse import open_events

GRAPH = b"""# who follows whom
ann bob cat

bob ann cat cat
cat dan
"""


def graphload(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comet.graphload", *args], input=stdin,
                          capture_output=True, timeout=60)


def following(client, subscriber: str) -> list[str]:
    return [id.decode() for id in client.zrange(following_key("comet", subscriber), 0, -1)]


def followers(client, id: str) -> set[str]:
    return {s.decode() for s in client.smembers(followers_key("comet", id))}


def test_a_file_is_loaded_with_a_summary_and_a_server_notifies_along_it(redis_server, tmp_path):
    graph = tmp_path / "graph.txt"
    graph.write_bytes(GRAPH)
    summary_file = tmp_path / "summary.json"
    done = graphload("--redis", redis_server.url, "--json", str(summary_file), str(graph))
    assert done.returncode == 0, done.stderr
    summary = json.loads(summary_file.read_text())
    assert {k: summary[k] for k in ("lines", "subscribers", "relations_added", "refused",
                                    "bad_lines")} == {
        "lines": 5, "subscribers": 3, "relations_added": 5, "refused": 0, "bad_lines": 0}
    assert b"5 relations added" in done.stdout
    client = redis.Redis.from_url(redis_server.url)
    assert following(client, "bob") == ["ann", "cat"]
    assert followers(client, "cat") == {"ann", "bob"}
    client.close()
    srv = RealServer("--redis", redis_server.url).start()
    try:
        events = open_events(srv.port, "/events/ann")
        subscribed(srv, 1)
        assert post(srv, "/notify/cat", b"cat is playing")["subscribers"] == 2
        assert events.next_message().data == "cat is playing"
        events.close()
    finally:
        srv.stop()


def test_stdin_is_read_and_a_second_load_adds_nothing_new(redis_server):
    first = graphload("--redis", redis_server.url, "-", stdin=GRAPH)
    assert first.returncode == 0, first.stderr
    again = graphload("--redis", redis_server.url, stdin=GRAPH)  # "-" is the default
    assert again.returncode == 0, again.stderr
    assert b"3 subscribers loaded" in again.stdout and b"0 relations added" in again.stdout


def test_both_limits_refuse_a_line_whole_and_are_counted(redis_server, tmp_path):
    lines = b"ann a b c d\nbob a\ncat a\ndan x a\neve x\n"
    summary_file = tmp_path / "summary.json"
    done = graphload("--redis", redis_server.url, "--max-following", "3", "--max-followers",
                     "2", "--json", str(summary_file), "-", stdin=lines)
    assert done.returncode == 0, done.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["refused"] == 2 and summary["subscribers"] == 3
    assert summary["refused_first"] == ["line 1: 'ann' is full (--max-following)",
                                        "line 4: 'a' is full (--max-followers)"]
    client = redis.Redis.from_url(redis_server.url)
    assert following(client, "ann") == [] and following(client, "dan") == []  # not even x
    assert followers(client, "a") == {"bob", "cat"} and followers(client, "x") == {"eve"}
    client.close()


def test_bad_lines_are_skipped_and_named_by_their_numbers(redis_server, tmp_path):
    lines = (b"ann bob\nbad! bob\ncat cat\ndan\neve b\xffb\nfay " + b"x" * 129 + b"\n"
             + b"gus " + b"y " * 600_000 + b"\nhal ann\n")
    summary_file = tmp_path / "summary.json"
    done = graphload("--redis", redis_server.url, "--json", str(summary_file), stdin=lines)
    assert done.returncode == 0, done.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["lines"] == 8 and summary["subscribers"] == 2
    assert summary["bad_lines"] == 6
    assert [named.split(":")[0] for named in summary["bad_first"]] == [
        "line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "cannot follow itself" in summary["bad_first"][1]
    assert b"6 bad lines skipped" in done.stdout


def test_a_cluster_gets_the_graph_on_the_node_of_its_slot(redis_cluster):
    done = graphload("--redis", redis_cluster.url, "--redis-cluster", stdin=GRAPH)
    assert done.returncode == 0, done.stderr
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        assert following(client, "ann") == ["bob", "cat"]
        assert followers(client, "cat") == {"ann", "bob"}
        node = client.get_node_from_key(following_key("comet", "ann"))
        keys = client.get_redis_connection(node).keys("comet:{graph}:*")
        assert len(keys) == 7 and {key_slot(k) for k in keys} == {key_slot(b"{graph}")}
    finally:
        client.close()
    srv = RealServer("--redis", redis_cluster.url, "--redis-cluster").start()
    try:
        assert post(srv, "/notify/cat", b"x")["subscribers"] == 2
    finally:
        srv.stop()


def test_an_unreachable_redis_exits_non_zero_and_never_shows_the_password():
    done = graphload("--redis", f"redis://:sekret-pw@127.0.0.1:{free_port()}/0", stdin=GRAPH)
    assert done.returncode == 2
    assert b"cannot reach Redis at redis://:***@127.0.0.1" in done.stderr
    assert b"sekret-pw" not in done.stdout + done.stderr


def test_a_password_from_the_url_loads_and_is_not_printed(tmp_path):
    redis_binary_or_skip("redis-server")
    with RedisServer(password="pw-0123456789") as server:
        summary_file = tmp_path / "summary.json"
        done = graphload("--redis", server.url, "--json", str(summary_file), stdin=GRAPH)
        assert done.returncode == 0, done.stderr
        shown = done.stdout + done.stderr + summary_file.read_bytes()
        assert b"pw-0123456789" not in shown and b":***@" in shown


def test_nothing_loaded_exits_one(redis_server):
    done = graphload("--redis", redis_server.url, stdin=b"# only a comment\nbad!\n")
    assert done.returncode == 1 and b"nothing loaded" in done.stderr


def test_follow_many_checks_every_item_first_then_loads_in_chunks(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    try:
        with pytest.raises(ValueError, match="item 1"):
            comet.graphload.follow_many(client, [("ann", ["bob"]), ("bob", ["b d"])])
        assert not client.keys("*")
        items = [(f"u{n}", ["star", f"v{n}"]) for n in range(5)]
        done = comet.graphload.follow_many(client, items, max_followers=3, chunk=2)
        assert done.added == 6 and done.taken == 3
        assert done.refused == [(3, "followers", "star"), (4, "followers", "star")]
        assert followers(client, "star") == {"u0", "u1", "u2"}
    finally:
        client.close()

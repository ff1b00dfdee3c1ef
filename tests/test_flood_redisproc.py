"""flood.redisproc: the redis-server bench starts, what a Redis holds, and the figures."""

from __future__ import annotations

import os
import socket

import pytest
import redis

from flood import benchtable, redisproc
from tests.redisservers import redis_binary_or_skip
from tests.workerservers import alive


@pytest.fixture
def started(tmp_path):
    redis_binary_or_skip("redis-server")
    proc = redisproc.RedisProcess(str(tmp_path))
    yield proc
    proc.stop()


def test_a_started_redis_answers_without_persistence_and_stop_leaves_nothing(started, tmp_path):
    started.start()
    client = redis.Redis.from_url(started.url)
    try:
        assert client.info("server")["process_id"] == started.pid
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        # conf/redis.conf's stream node size, and what it buys: a stream with one
        # message costs about a third of what Redis's default 4096 makes it cost
        assert client.config_get("stream-node-max-bytes") == {
            "stream-node-max-bytes": str(redisproc.STREAM_NODE_MAX_BYTES)}
        before = client.info("memory")["used_memory"]
        for i in range(1000):
            client.xadd(f"comet:{{{i}}}:h", {"d": f"msg {i} ts=1764540000.123456"})
        per_stream = (client.info("memory")["used_memory"] - before) / 1000
        assert per_stream < 2048, per_stream
    finally:
        client.close()
    workdir, pid = started.dir, started.pid
    assert os.path.isdir(workdir)
    started.stop()
    assert not alive(pid) and not os.path.exists(workdir)
    assert os.path.exists(started.log_path) and started.log_path.startswith(str(tmp_path))


def test_a_port_taken_before_redis_binds_it_is_given_up_for_another(started, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = [busy]
    real = redisproc._free_port
    monkeypatch.setattr(redisproc, "_free_port", lambda: ports.pop() if ports else real())
    try:
        started.start()
    finally:
        taken.close()
    assert not ports and started.port != busy
    client = redis.Redis.from_url(started.url)
    try:
        assert client.info("server")["process_id"] == started.pid
    finally:
        client.close()


def test_memory_reads_info_and_the_rss_of_a_known_pid(started):
    started.start()
    by_pid = redisproc.memory(started.url, started.pid)
    assert by_pid["used_memory"] > 0 and by_pid["rss_from"] == "psutil"
    assert by_pid["rss_bytes"] > 0 and "error" not in by_pid
    by_info = redisproc.memory(started.url)
    assert by_info["rss_from"] == "INFO used_memory_rss"
    assert by_info["rss_bytes"] == by_info["used_memory_rss"] > 0


def test_a_redis_that_does_not_answer_costs_the_figure_not_the_run():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    found = redisproc.memory(f"redis://127.0.0.1:{port}/0")
    assert found["used_memory"] is None and found["rss_bytes"] is None and found["error"]


def reading(used: int, rss: int, pss: int, ids: int) -> dict:
    """One :func:`flood.measure.snapshot` as far as the Redis figures read it."""
    return {"redis": {"used_memory": used, "rss_bytes": rss, "rss_from": "psutil"},
            "server": {"pss_bytes": pss}, "server_stats": {"ids": ids}}


def test_figures_divide_redis_growth_by_ids_and_add_it_to_the_server_pss():
    before = reading(used=1_000_000, rss=10_000_000, pss=60_000_000, ids=0)
    after = reading(used=3_000_000, rss=12_048_000, pss=62_048_000, ids=10_000)
    doc = redisproc.figures("redis://:secret@127.0.0.1:6379/0", 42, before, after,
                            {"active": 1000})
    assert doc["redis_bytes_per_id"] == 200.0
    assert doc["redis_kb_per_conn"] == 2.0
    assert doc["server_redis_kb_per_conn"] == 4.0
    assert doc["redis_url"] == "redis://:***@127.0.0.1:6379/0" and doc["redis_started"]
    rows = dict(benchtable.redis_rows(doc))
    assert rows["Redis used_memory"].endswith("= 200 B per subscribed id (10000 ids)")
    assert rows["server + Redis userland"].startswith("4.00 KB/conn")


def test_figures_missing_a_reading_are_none_not_an_error():
    before = reading(used=1_000_000, rss=10_000_000, pss=60_000_000, ids=0)
    after = {**reading(used=3_000_000, rss=12_000_000, pss=62_000_000, ids=0),
             "server_stats": None}
    after["redis"] = {"used_memory": None, "rss_bytes": None, "rss_from": None,
                      "error": "Timeout reading from socket"}
    doc = redisproc.figures("redis://127.0.0.1:6379/0", None, before, after, {"active": 10})
    assert doc["redis_bytes_per_id"] is None and doc["server_redis_kb_per_conn"] is None
    assert doc["redis_errors"] == ["Timeout reading from socket"]
    rows = dict(benchtable.redis_rows(doc))
    assert rows["Redis errors"] == "Timeout reading from socket"
    assert "- B per subscribed id" in rows["Redis used_memory"]


def test_ids_from_a_stats_answer_missing_a_worker_are_not_divided_by():
    before = reading(used=1_000_000, rss=10_000_000, pss=60_000_000, ids=0)
    after = reading(used=3_000_000, rss=12_000_000, pss=62_000_000, ids=5_000)
    after["server_stats"]["workers"] = [{"index": 0, "pid": 1, "ids": 5_000},
                                        {"index": 1, "pid": 2, "error": "no answer"}]
    doc = redisproc.figures("redis://127.0.0.1:6379/0", None, before, after, {"active": 10})
    assert doc["redis_ids"] is None and doc["redis_bytes_per_id"] is None


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:pw@host/1", "redis://user:***@host/1"),
    ("redis://user@host/1", "redis://user@host/1"),
])
def test_a_password_in_the_url_is_never_shown(url, shown):
    assert redisproc.redacted(url) == shown


def test_conf_redis_conf_sets_what_the_bench_starts_redis_with():
    conf = open(os.path.join(os.path.dirname(__file__), "..", "conf", "redis.conf")).read()
    lines = [line.split() for line in conf.splitlines() if line and not line.startswith("#")]
    assert ["stream-node-max-bytes", str(redisproc.STREAM_NODE_MAX_BYTES)] in lines


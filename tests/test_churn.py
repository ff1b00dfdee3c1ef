"""The churn soak (flood/churn.py, flood/serverstate.py): a small churn against real
servers in both lives and with two workers over a real Redis, and the verdicts that
must fail when a server does not come back.

The churn runs as the command an operator runs (``python -m flood.churn``): its exit
status and JSON are what is checked. The failing verdicts are fed states with real
numbers: made up where a property of the comparison is meant (10 % of memory), and
read from a real server holding a connection the test left open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flood import serverstate
from flood.serverstate import State
from tests.realserver import RealServer
from tests.sse import open_events
from tests.workerservers import WorkersServer

#: dead peers are found when the server next writes to them (the plain life): every second
FAST_FLAGS = ("--interval", "1", "--heartbeat", "1", "--poll-timeout", "2")
#: a few thousand connects, at most 100 at a time, over 200 ids, the history filled
CHURN = ("--total", "3000", "--concurrency", "100", "--ids", "200", "--warmup", "600",
         "--fill-history", "100", "--for", "120", "--settle", "30")


def churn(url: str, *args: str, tmp_path) -> dict:
    out = tmp_path / "churn.json"
    done = subprocess.run([sys.executable, "-m", "flood.churn", url, *CHURN, *args,
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    print(done.stdout, done.stderr)
    report = json.loads(out.read_text())
    assert done.returncode == (0 if report["ok"] else 1)
    return report


def _churned(report: dict, workers: int = 1) -> None:
    """What every run must show: the churn happened, in every way, and came back."""
    made = report["churn"]
    assert made["attempted"] == 3000
    assert set(made["opened"]) == {"test", "events", "ws", "poll"}
    assert set(made["ends"]) == {"rst", "clean", "mid-request"}
    assert made["published"] > 0 and not made["publish_failed"]
    assert report["start"]["connections"] == report["start"]["ids"] == 0
    assert len(report["end"]["fds"]) == len(report["start"]["fds"]) >= workers
    failed = [check for check in report["checks"] if not check["ok"]]
    assert not failed, failed
    assert report["ok"]


def test_a_churn_gives_back_everything_it_took(start_server, tmp_path):
    server = start_server(*FAST_FLAGS)
    report = churn(server.url, tmp_path=tmp_path)
    _churned(report)
    assert report["end"]["history_kept"] == report["start"]["history_kept"] == 200 * 100
    assert "Traceback" not in server.log_text()


def test_two_workers_over_redis_unsubscribe_everything_the_churn_subscribed(
        redis_server, tmp_path):
    server = WorkersServer("--redis", redis_server.url, *FAST_FLAGS, workers=2).start()
    try:
        report = churn(server.url, "--redis", redis_server.url, tmp_path=tmp_path)
    finally:
        server.stop()
    _churned(report, workers=2)
    names = {check["name"] for check in report["checks"]}
    assert {"broker subscriptions", "Redis id channels (PUBSUB CHANNELS)",
            "Redis subscribers of the ids (PUBSUB NUMSUB)"} <= names
    assert report["end"]["redis_channels"] == report["end"]["redis_numsub"] == 0
    assert {"master", "worker 0", "worker 1"} <= set(report["end"]["pids"])


def _state(**changes) -> State:
    base = dict(pids={"server": 4242}, rss={"server": 50 * 2**20}, fds={"server": 8},
                connections=0, ids=0, timers=0, token_timers=0)
    return State(**{**base, **changes})


def _failed(start: State, end: State) -> dict[str, str]:
    return {c.name: c.why for c in serverstate.verdicts(start, end) if not c.ok}


def test_a_state_that_came_back_passes_every_check():
    assert _failed(_state(), _state(rss={"server": 54 * 2**20}, fds={"server": 7})) == {}


def test_memory_more_than_ten_percent_over_the_start_fails():
    failed = _failed(_state(), _state(rss={"server": 56 * 2**20}))
    assert list(failed) == ["resident memory"]
    assert "56.0 MiB against at most 55.0 MiB" in failed["resident memory"]


def test_every_structure_left_behind_fails_its_own_check():
    start = _state(subscribed_ids=0, redis_channels=0, redis_numsub=0)
    end = _state(fds={"server": 11}, connections=2, ids=3, timers=2, token_timers=1,
                 subscribed_ids=3, redis_channels=3, redis_numsub=4)
    failed = _failed(start, end)
    assert failed == {
        "open descriptors of server (pid 4242)": "3 more than at the start",
        "connections held": "2 left behind", "ids in the router": "3 left behind",
        "timer wheel entries": "2 left behind", "token timers": "1 left behind",
        "broker subscriptions": "3 left behind",
        "Redis id channels (PUBSUB CHANNELS)": "3 left behind",
        "Redis subscribers of the ids (PUBSUB NUMSUB)": "4 left behind"}


def test_a_restarted_worker_or_unreadable_descriptors_fail():
    start = _state(pids={"worker 0": 10, "worker 1": 11}, rss={"worker 0": 1, "worker 1": 1},
                   fds={"worker 0": 8, "worker 1": 8})
    end = _state(pids={"worker 0": 10, "worker 1": 12}, rss={"worker 0": 1, "worker 1": 1},
                 fds={"worker 0": None, "worker 1": 8})
    failed = _failed(start, end)
    assert "the server's processes changed" in failed["resident memory"]
    assert "unreadable" in failed["open descriptors of worker 0 (pid 10)"]
    assert failed["open descriptors of worker 1 (pid 11)"] == "the process is gone or replaced"


@pytest.mark.parametrize("hibernate", ["on", "off"])
def test_a_real_server_holding_a_stream_fails_the_checks(hibernate):
    server = RealServer("--hibernate", hibernate).start()
    try:
        start = serverstate.take("127.0.0.1", server.port)
        stream = open_events(server.port, "/events/left-open")
        server.wait_for(lambda s: s["ids"] == 1, what="the stream held")
        failed = _failed(start, serverstate.take("127.0.0.1", server.port))
        stream.close()
    finally:
        server.stop()
    assert failed["connections held"] == failed["ids in the router"] == "1 left behind"
    assert failed[f"open descriptors of server (pid {server.proc.pid})"] == \
        "1 more than at the start"


def test_connections_to_the_servers_redis_are_told_apart_from_other_descriptors(redis_server):
    """A Redis client's pool keeps what it opened (up to its bound): counted apart, not as
    descriptors the churn left behind."""
    client = redis_server.client()
    client.ping()
    others = redis_server.client()
    others.ping()
    try:
        assert serverstate.redis_connections(os.getpid(), redis_server.url) == 2
        assert serverstate.redis_connections(os.getpid(), "redis://127.0.0.1:1/0") == 0
    finally:
        client.close()
        others.close()

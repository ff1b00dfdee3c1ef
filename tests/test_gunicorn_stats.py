"""``/stats``, ``/metrics`` and ``/dashboard/events`` for the whole server under gunicorn.

Real gunicorn masters (``-c conf/gunicorn.conf.py -w 2``, comet's worker class)
over a real redis-server: every worker's figures are in the sums whichever
worker answers, a worker killed and restarted by gunicorn is replaced in them
by its successor, and the run directory goes with the master. The run
directory's safety checks are tested on the real filesystem.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from comet import rundir
from comet.siblings import fetch
from tests.chunked import open_stream
from tests.sse import open_events
from tests.test_gunicorn import gunicorn, wait_until_serving

CONF = str(Path(__file__).resolve().parents[1] / "conf" / "gunicorn.conf.py")


def whole_server(redis_url: str) -> tuple[subprocess.Popen, int]:
    """``gunicorn -c conf/gunicorn.conf.py -w 2`` with comet's worker and COMET_REDIS."""
    proc, port = gunicorn("-c", CONF, "-w", "2", worker="comet.gunicorn.Worker",
                          env={"COMET_REDIS": redis_url, "COMET_INTERVAL": "60"})
    wait_until_serving(proc, port)
    return proc, port


def stats(port: int) -> dict:
    # Connection: close: each request a new connection, for whichever worker takes it
    answer = requests.get(f"http://127.0.0.1:{port}/stats", timeout=10,
                          headers={"Connection": "close"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def worker_pids(proc: subprocess.Popen) -> set[int]:
    return {child.pid for child in psutil.Process(proc.pid).children()
            if child.status() != psutil.STATUS_ZOMBIE}


def wait_for(port: int, condition, what: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        found = stats(port)
        if condition(found):
            return found
        assert time.monotonic() < deadline, f"{what}: {found}"
        time.sleep(0.1)


def every_worker_answers(proc: subprocess.Popen, count: int = 2):
    """/stats lists ``count`` workers, all answering, and they are the master's children."""
    def check(found: dict) -> bool:
        pids = {w["pid"] for w in found["workers"] if "error" not in w}
        return len(found["workers"]) == count and pids == worker_pids(proc)
    return check


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then the master's exit status; SIGKILL by its pid if it outstays."""
    proc.terminate()
    try:
        assert proc.wait(30) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("gunicorn did not stop:\n" + proc.communicate()[0]) from None


def kill_leftovers(proc: subprocess.Popen, workers: set[int]) -> None:
    proc.kill()
    proc.wait(20)
    for pid in workers:
        try:
            if "gunicorn" in " ".join(psutil.Process(pid).cmdline()):
                os.kill(pid, signal.SIGKILL)
        except psutil.Error:
            pass


def test_every_gunicorn_worker_is_in_the_sums_whichever_answers(redis_server):
    proc, port = whole_server(redis_server.url)
    pids: set[int] = set()
    try:
        first = wait_for(port, every_worker_answers(proc), "two workers answering")
        pids = {w["pid"] for w in first["workers"]}
        assert first["pid"] == proc.pid and first["master"]["pid"] == proc.pid
        where = rundir.for_gunicorn_master(proc.pid)
        assert oct(where.stat().st_mode & 0o777) == "0o700"
        assert sorted(p.name for p in where.iterdir()) == sorted(
            rundir.socket_name(w["index"], w["pid"]) for w in first["workers"])
        # Concurrent handshakes: one worker busy with one lets the other accept the next.
        streams = []
        with ThreadPoolExecutor(16) as pool:
            while len(streams) < 256:
                streams += pool.map(lambda n: open_stream(port, f"/test/s{n}"),
                                    range(len(streams), len(streams) + 32))
                count = len(streams)
                held = wait_for(port, lambda s, n=count: s["connections"]["total"] == n,
                                "every stream counted")
                if all(w["connections"]["total"] for w in held["workers"]):
                    break
        assert all(w["connections"]["total"] for w in held["workers"]), held
        for n in range(3):
            sent = requests.post(f"http://127.0.0.1:{port}/send/s{n}", data=b"one",
                                 headers={"Connection": "close"}, timeout=10)
            assert sent.status_code == 200
        wait_for(port, lambda s: s["messages"]["out"] == 3, "every delivery")
        answered_by = set()
        # /stats asked on 16 connections at once, as the streams were opened: one at a
        # time, an idle machine can hand every one to the same worker
        answers = []
        with ThreadPoolExecutor(16) as pool:
            for _ in range(20):
                answers += pool.map(lambda _: stats(port), range(16))
                if {found["answered_by"] for found in answers} == pids:
                    break
        for found in answers:
            entries = found["workers"]
            assert {w["pid"] for w in entries} == pids and found["answered_by"] in pids
            assert found["connections"]["total"] == len(streams) == sum(
                w["connections"]["total"] for w in entries)
            assert found["messages"]["in"] == 3 == sum(w["messages"]["in"] for w in entries)
            assert found["accepted"] == sum(w["accepted"] for w in entries) >= len(streams)
            assert found["pss_bytes"] == sum(w["pss_bytes"] for w in entries)
            answered_by.add(found["answered_by"])
        assert answered_by == pids, "both workers answered /stats"

        scrape = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(scrape)
                   for s in family.samples}
        assert samples[("comet_workers", (("state", "answering"),))] == 2
        assert samples[("comet_workers", (("state", "silent"),))] == 0
        assert samples[("comet_connections", (("transport", "test"),))] == len(streams)
        assert samples[("comet_messages_published_total", (("path", "send"),))] == 3
        assert sum(value for (name, _), value in samples.items()
                   if name == "comet_deliveries_total") == 3
        assert samples[("comet_deliveries_total", (("transport", "test"),))] == 3

        dashboard = open_events(port, "/dashboard/events")
        shown = json.loads(dashboard.next_message().data)
        dashboard.close()
        assert {w["pid"] for w in shown["workers"]} == pids
        assert shown["connections"]["total"] == len(streams)
        for stream in streams:
            stream.close()
        stop(proc)
        assert not where.exists(), "on_exit removed the run directory"
    finally:
        kill_leftovers(proc, pids)


def test_a_worker_killed_is_replaced_in_the_sums_by_its_successor(redis_server):
    proc, port = whole_server(redis_server.url)
    pids: set[int] = set()
    try:
        first = wait_for(port, every_worker_answers(proc), "two workers answering")
        pids = {w["pid"] for w in first["workers"]}
        victim = first["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        after = wait_for(port, lambda s: every_worker_answers(proc)(s)
                         and victim["pid"] not in {w["pid"] for w in s["workers"]},
                         "the killed worker's successor in /stats")
        successor, = [w for w in after["workers"] if w["pid"] not in pids]
        pids.add(successor["pid"])
        assert successor["index"] > max(w["index"] for w in first["workers"]), (
            "gunicorn's age: a restarted worker takes the next")
        assert after["connections"]["total"] == sum(w["connections"]["total"]
                                                    for w in after["workers"])
        where = rundir.for_gunicorn_master(proc.pid)
        assert rundir.socket_name(victim["index"], victim["pid"]) not in os.listdir(where)
        stop(proc)
        assert not where.exists(), "on_exit removed the run directory"
    finally:
        kill_leftovers(proc, pids)


# -- the run directory, on the real filesystem ------------------------------------------


def test_the_run_directory_is_made_private(tmp_path):
    made = rundir.make_private(tmp_path / "run")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    assert rundir.make_private(made) == made, "a worker coming second takes it as found"


@pytest.mark.parametrize("taken_by", ["open directory", "file", "link"])
def test_a_run_directory_not_ours_alone_is_refused(tmp_path, taken_by):
    path = tmp_path / "run"
    if taken_by == "open directory":
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    elif taken_by == "file":
        path.write_text("")
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(rundir.UnsafeRunDirectory, match="refusing it as the run directory"):
        rundir.make_private(path)
    rundir.remove(path)
    assert path.exists() or path.is_symlink(), "remove leaves what is not ours"
    if taken_by == "link":
        assert (tmp_path / "elsewhere").is_dir(), "never followed"


def test_a_run_directory_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(rundir.UnsafeRunDirectory, match="belongs to uid 65534"):
        rundir.make_private(path)
    rundir.remove(path)
    assert path.is_dir(), "remove leaves another user's directory"


def test_a_socket_nobody_listens_on_is_a_dead_workers_and_goes(tmp_path):
    stale = tmp_path / rundir.socket_name(3, 4242)
    with socket.socket(socket.AF_UNIX) as listener:  # a worker killed: its file stays
        listener.bind(str(stale))
        listener.listen(1)
    assert stale.exists()
    assert fetch(stale) is None and not stale.exists()
    assert fetch(tmp_path / rundir.socket_name(4, 4343)) is None

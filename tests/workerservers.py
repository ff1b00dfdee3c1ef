"""``python -m comet.server --workers N`` as real processes: the master and its workers.

:class:`WorkersServer` is a :class:`~tests.realserver.RealServer` (it waits for the
master's "serving on" line) that also knows the workers: from ``/stats`` (who answers
now, by index) and from the master's log (every pid it ever forked, so that a test
stops each of them by its pid, even after killing the master outright).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil

from tests.realserver import RealServer
from tests.sse import open_events

STARTED = re.compile(r"started worker (\d+): pid (\d+)")
RUNDIR = re.compile(r"run directory (\S+) ")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class WorkersServer(RealServer):
    """A master and its workers, each stopped by its pid after the test."""

    def __init__(self, *args: str, workers: int = 2, env: dict | None = None) -> None:
        super().__init__("--workers", str(workers), *args, env=env)
        self.count = workers

    @property
    def master_pid(self) -> int:
        return self.proc.pid

    def forked(self) -> list[tuple[int, int]]:
        """(index, pid) of every worker the master logged starting, in order."""
        return [(int(m.group(1)), int(m.group(2))) for m in map(STARTED.search, self.lines)
                if m]

    def workers(self) -> dict[int, int]:
        """index -> pid of the workers that answered ``/stats`` just now."""
        return {w["index"]: w["pid"] for w in self.stats()["workers"] if "error" not in w}

    def signal_master(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM first, so that the master removes its run directory; then by force."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        super().stop()
        for _, pid in self.forked():
            if alive(pid) and _is_comet(pid):
                os.kill(pid, signal.SIGKILL)
        rundir = next((m.group(1) for m in map(RUNDIR.search, self.lines) if m), None)
        if rundir and Path(rundir).name.startswith("comet-"):
            shutil.rmtree(rundir, ignore_errors=True)  # left only by a master killed outright


def _is_comet(pid: int) -> bool:
    """The pid is still one of our workers (and not a recycled pid of something else)."""
    try:
        return "comet.server" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def events_on_every_worker(srv: WorkersServer, most: int = 64) -> list:
    """SSE subscribers (ids ``e0``, ``e1``...) until every worker holds at least one."""
    streams = []
    while len(streams) < most:
        streams.append(open_events(srv.port, f"/events/e{len(streams)}"))
        count = len(streams)
        held = srv.wait_for(lambda s, count=count: s["broker"]["subscribed_ids"] == count,
                            what="every subscriber's id subscribed")
        if all(w["connections"].get("events", 0) > 0 for w in held["workers"]):
            return streams
    raise AssertionError(f"{most} subscribers did not reach every worker: {srv.stats()}")


def one_id_on_every_worker(srv: WorkersServer, path: str, most: int = 64) -> list:
    """SSE connections to one ``path`` (one id) until every worker holds at least one."""
    streams = []
    while len(streams) < most:
        streams.append(open_events(srv.port, path))
        count = len(streams)
        held = srv.wait_for(lambda s, n=count: s["connections"].get("events", 0) == n,
                            what="every connection open")
        if all(w["connections"].get("events", 0) for w in held["workers"]):
            return streams
    raise AssertionError(f"{most} connections to {path} did not reach every worker")

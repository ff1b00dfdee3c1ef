"""Several flood processes as one: start children, read their JSON lines, sum their snapshots.

Why processes: one process may hold at most RLIMIT_NOFILE sockets (20,000 here, less
:data:`comet.hostlimits.FLOOD_FD_MARGIN`; the count is
:func:`comet.hostlimits.processes_needed`) and uses one core. Each child is ``python -m
flood.worker PLAN`` (see :mod:`flood.worker`); this module never parses HTTP, it only
relays ``Closed:`` lines and keeps each child's latest snapshot so the parent prints one
summed ``Stats:`` line.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

import gevent
from gevent import subprocess

from flood.worker import Plan, plan_json


class Child:
    """One child process and what it last said."""

    def __init__(self, index: int, proc: subprocess.Popen) -> None:
        self.index = index
        self.proc = proc
        self.ready: dict | None = None    #: snapshot before its first connection
        self.latest: dict | None = None   #: most recent snapshot
        self.final: dict | None = None    #: the summary snapshot, once it has exited cleanly
        self.stderr = b""


class Children:
    """Runs ``count`` children over one URL file and one schedule."""

    def __init__(self, plan: Plan, count: int, on_line: Callable[[str], None]) -> None:
        self.plan = plan
        self.count = count
        self.on_line = on_line
        self.children: list[Child] = []
        self._readers: list[gevent.Greenlet] = []

    def start(self) -> None:
        for i in range(self.count):
            plan = replace(self.plan, index=i, count=self.count)
            proc = subprocess.Popen([sys.executable, "-m", "flood.worker", plan_json(plan)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            child = Child(i, proc)
            self.children.append(child)
            self._readers.append(gevent.spawn(self._listen, child))
            self._readers.append(gevent.spawn(self._errors, child))

    def _listen(self, child: Child) -> None:
        for raw in child.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.pop("ev", None)
            if kind == "line":
                self.on_line(event["text"])
            elif kind == "stats":
                child.latest = event
            elif kind == "ready":
                child.ready = child.latest = event
            elif kind == "summary":
                child.final = child.latest = event

    def _errors(self, child: Child) -> None:
        child.stderr = child.proc.stderr.read()

    def snapshots(self) -> list[dict]:
        return [c.latest for c in self.children if c.latest is not None]

    def all_ready(self) -> bool:
        return all(c.ready is not None for c in self.children)

    def running(self) -> bool:
        return any(c.proc.poll() is None for c in self.children)

    def stop(self) -> None:
        """Ask every child to stop; each prints its summary and closes its streams."""
        for child in self.children:
            if child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float = 30.0) -> list[str]:
        """Wait for every child; kill the stragglers. Returns a problem per failed child."""
        problems = []
        for child in self.children:
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
                problems.append(f"flood process {child.index} did not stop; killed")
        gevent.joinall(self._readers, timeout=5)
        for child in self.children:
            if child.proc.returncode != 0 or child.final is None:
                tail = child.stderr.decode(errors="replace").strip().splitlines()[-3:]
                problems.append(f"flood process {child.index} exited {child.proc.returncode}: "
                                + " | ".join(tail))
        return problems

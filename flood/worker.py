"""One flood process: pace the new connections, hold the streams, stop on time or on a signal.

:class:`Flood` is the whole flood when ``--procs 1``. With more processes, each child
runs ``python -m flood.worker CONFIG_JSON`` and takes every Nth URL; it writes JSON
lines to stdout (``stats`` snapshots, ``line`` for ``Closed:`` lines, ``summary`` at
the end) that :mod:`flood.procs` reads and sums. The schedule is global: URL number g
starts at ``start_at + g * wait``, so N processes together keep the seed's pace.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import gevent
import gevent.event

from flood import transport as transports
from flood.connect import Connector
from flood.reader import Reader
from flood.stats import Counters, own_rss
from flood.urls import load_urls


@dataclass
class Plan:
    """What one process does; JSON-serialisable so a parent can hand it to a child."""

    url_file: str = ""
    index: int = 0                 #: this process takes urls[index::count]
    count: int = 1
    wait_ms: float = 0.0           #: gap between connection starts over the whole flood
    start_at: float = 0.0          #: wall-clock start of the schedule (0 = now)
    duration: float | None = None  #: seconds from start_at, then stop
    sources: list[str] = field(default_factory=list)
    concurrency: int = 256         #: connections being opened at once (flood.connect)
    timeout: float = 10.0          #: connect + request + head, seconds
    transport: str = "stream"
    emit_every: float = 1.0        #: seconds between snapshots sent to the parent
    closed_lines: int = 20         #: ``Closed:`` lines printed per second at most
    unread: bool = False           #: hold streams without reading what arrives (bench --unread)


class ClosedLines:
    """Prints ``Closed: <reason>`` as the seed does, but at most ``limit`` a second.

    100k connections refused at once would otherwise drown the stats; the summary
    still counts every reason.
    """

    def __init__(self, out: Callable[[str], None], limit: int) -> None:
        self.out = out
        self.limit = limit
        self.shown = 0
        self.hidden = 0
        self._second = 0

    def __call__(self, reason: str) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self.flush()
            self._second, self.shown = second, 0
        if self.shown < self.limit:
            self.shown += 1
            self.out(f"Closed: {reason}")
        else:
            self.hidden += 1

    def flush(self) -> None:
        if self.hidden:
            self.out(f"Closed: ... {self.hidden} more not shown (reasons in the summary)")
            self.hidden = 0


class Flood:
    """Connects this process's share of the URLs and holds the streams until told to stop."""

    def __init__(self, plan: Plan, urls: list[str], out: Callable[[str], None]) -> None:
        self.plan = plan
        #: this process's share: URL number index, index + count, ... of the whole flood
        self.urls = urls
        self.counters = Counters()
        self.closed_lines = ClosedLines(out, plan.closed_lines)
        self.reader = Reader(self.counters, self.closed_lines, plan.unread)
        self.connector = Connector(self.counters, self.reader, transports.get(plan.transport),
                                   self.closed_lines, plan.timeout, plan.concurrency)
        self.stopped = gevent.event.Event()
        self.started = 0.0

    def stop(self) -> None:
        self.stopped.set()

    def snapshot(self) -> dict:
        return self.counters.snapshot()

    def _ramp(self) -> None:
        plan = self.plan
        wait = plan.wait_ms / 1000.0
        sources = plan.sources
        for j, url in enumerate(self.urls):
            k = plan.index + j * plan.count  # its number in the whole flood's schedule
            if wait > 0:
                delay = self.started + k * wait - time.time()
                if delay > 0:
                    gevent.sleep(delay)
            source = sources[k % len(sources)] if sources else None
            self.connector.open(url, source)

    def _finished(self, ramp: gevent.Greenlet) -> bool:
        """Nothing left to do: every URL tried, none connecting, none held."""
        return ramp.dead and not len(self.connector) and not len(self.reader)

    def run(self, on_tick: Callable[[], None] | None = None, tick: float = 1.0) -> dict:
        """Flood until the duration ends, :meth:`stop` is called, or nothing is left to do."""
        plan = self.plan
        self.started = plan.start_at or time.time()
        self.counters.rss_ready = own_rss()
        deadline = self.started + plan.duration if plan.duration is not None else None
        self.reader.start()
        self.connector.start()
        ramp = gevent.spawn(self._ramp)
        next_tick = time.time() + tick
        try:
            while not self.stopped.is_set():
                now = time.time()
                if deadline is not None and now >= deadline:
                    break
                if deadline is None and self._finished(ramp):
                    break
                if on_tick is not None and now >= next_tick:
                    next_tick += tick
                    on_tick()
                self.stopped.wait(min(0.05, max(next_tick - now, 0.001)))
        finally:
            ramp.kill()
            self.connector.close_all()
            self.closed_lines.flush()
            self.reader.close_all()
        return self.snapshot()


def _write(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def run_child(plan: Plan) -> int:
    """A child process of a multi-process flood: JSON lines out, SIGINT/SIGTERM end it cleanly."""
    urls = load_urls(plan.url_file, plan.index, plan.count).urls
    flood = Flood(plan, urls, lambda text: _write({"ev": "line", "text": text}))
    gevent.signal_handler(signal.SIGINT, flood.stop)
    gevent.signal_handler(signal.SIGTERM, flood.stop)
    flood.counters.rss_ready = own_rss()
    _write({"ev": "ready", **flood.snapshot()})
    final = flood.run(on_tick=lambda: _write({"ev": "stats", **flood.snapshot()}),
                      tick=plan.emit_every)
    _write({"ev": "summary", **final})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m flood.worker PLAN_JSON (flood starts it)\n")
        return 2
    return run_child(Plan(**json.loads(args[0])))


def plan_json(plan: Plan) -> str:
    return json.dumps(asdict(plan))


if __name__ == "__main__":
    sys.exit(main())

"""What ``GET /stats`` serves: the hub's counters, connections by transport, memory.

:class:`Counters` has one writer, the hub (:mod:`comet.hub`); everything else
reads them through ``/stats``. Memory comes from psutil: RSS now, RSS when the
server became ready (the baseline), and their difference per held connection,
the seed's figure of merit.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections import Counter

import psutil

from comet.ends import SLOW_CONSUMER


class Counters:
    """Every count ``/stats`` shows; written by the hub alone."""

    def __init__(self) -> None:
        self.started = time.time()
        self._process = psutil.Process()
        self.baseline_rss = self.rss()
        #: connections open now, by transport ("test", "events", "poll", "ws")
        self.open: Counter = Counter()
        #: connections admitted / refused (at --max-connections, or shutting down)
        self.accepted = 0
        self.refused = 0
        #: messages published here (send and broadcast)
        self.messages_in = 0
        #: deliveries made by this process (one message to three connections: three)
        self.messages_out = 0
        #: messages lost with dropped connections: the one refused and those queued
        self.messages_dropped = 0
        #: connections the hub gave up on, by End.reason ("slow consumer", "write timed out")
        self.drops: Counter = Counter()
        #: connections closed, by End.reason ("client gone", "server shutting down", ...)
        self.ends: Counter = Counter()

    @property
    def held(self) -> int:
        """Connections open now, whatever their transport."""
        return sum(self.open.values())

    def rss(self) -> int:
        return self._process.memory_info().rss

    def reset_baseline(self) -> None:
        """Call once the server is warmed up and idle, before clients come."""
        self.baseline_rss = self.rss()

    def snapshot(self, ids: int, timers: int) -> dict:
        rss = self.rss()
        held = self.held
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "connections": {"total": held, **dict(sorted(self.open.items()))},
            "accepted": self.accepted,
            "refused": self.refused,
            "ids": ids,
            "messages": {"in": self.messages_in, "out": self.messages_out,
                         "dropped": self.messages_dropped},
            "slow_consumers": self.drops[SLOW_CONSUMER.reason],
            "drops": dict(sorted(self.drops.items())),
            "ends": dict(sorted(self.ends.items())),
            "timers": timers,
            "rss_bytes": rss,
            "rss_baseline_bytes": self.baseline_rss,
            "rss_per_connection": round((rss - self.baseline_rss) / held) if held else None,
        }


def memory_by_line(limit: int = 25) -> dict:
    """Where the Python heap is, by source line (``--tracemalloc``): the next step down."""
    if not tracemalloc.is_tracing():
        return {"error": "start the server with --tracemalloc 1 (or more frames)"}
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),))
    stats = snapshot.statistics("lineno")
    total = sum(stat.size for stat in stats)
    return {
        "traced_bytes": total,
        "lines": [{"where": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}",
                   "bytes": stat.size, "blocks": stat.count} for stat in stats[:limit]],
    }

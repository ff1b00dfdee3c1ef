"""What ``GET /stats`` serves: the router's counters, connections by transport, memory.

Memory comes from psutil: RSS now, RSS when the server became ready (the
baseline), and their difference per held connection, the seed's figure of merit.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections import Counter

import psutil

from comet.router import Router


class Stats:
    """Counters the app keeps beside the router's, and the /stats snapshot."""

    def __init__(self, router: Router, wheel=None) -> None:
        self.router = router
        #: the timer wheel of hibernated connections (its size is in /stats)
        self.wheel = wheel
        self.started = time.time()
        self._process = psutil.Process()
        self.baseline_rss = self.rss()
        #: streaming connections open now, by transport ("test", ...)
        self.open: Counter = Counter()
        #: streaming connections ever accepted / refused at --max-connections
        self.accepted = 0
        self.refused = 0

    def rss(self) -> int:
        return self._process.memory_info().rss

    def reset_baseline(self) -> None:
        """Call once the server is warmed up and idle, before clients come."""
        self.baseline_rss = self.rss()

    def snapshot(self) -> dict:
        rss = self.rss()
        held = sum(self.open.values())
        by_transport = {name: count for name, count in sorted(self.open.items())}
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "connections": {"total": held, **by_transport},
            "accepted": self.accepted,
            "refused": self.refused,
            "ids": self.router.ids,
            "messages": {
                "in": self.router.messages_in,
                "out": self.router.messages_out,
                "dropped": self.router.messages_dropped,
            },
            "slow_consumers": self.router.slow_consumers,
            "timers": len(self.wheel) if self.wheel is not None else 0,
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

"""A bench run's time series and its live progress line.

Every :data:`SAMPLE` seconds while ramping, holding and waiting for a broadcast,
one row of client counts and server RSS and CPU lands in :attr:`Timeline.series`
(the JSON's ``series`` and the PNG's curves). The same figures feed the progress
line on stderr, so the operator sees what the JSON will hold.
"""

from __future__ import annotations

import sys
import time

import psutil

from flood import memory, stats
from flood.procs import Children
from flood.target import Target

#: Seconds between samples while ramping and holding (also the flood's snapshot rate).
SAMPLE = 0.25


class Timeline:
    """The rows sampled so far, timed from the start of the run."""

    def __init__(self, target: Target, connections: int) -> None:
        self.target = target
        self.connections = connections
        self.series: list[dict] = []
        self.t0 = time.time()
        self.progress = sys.stderr.isatty()
        self._cpu_procs: list[psutil.Process] = []

    def elapsed(self) -> float:
        """Seconds since the run began, as every ``t`` in the JSON counts them."""
        return round(time.time() - self.t0, 3)

    def log(self, text: str) -> None:
        """A line on stderr that first clears a progress line drawn in place."""
        sys.stderr.write(("\r\x1b[K" if self.progress else "") + text + "\n")
        sys.stderr.flush()

    def sample(self, children: Children) -> dict:
        """Append one row; the flood's summed snapshot, for the caller's own checks."""
        total = stats.sum_snapshots(children.snapshots())
        row = {"t": self.elapsed(), "active": total["active"],
               "closed": total["closed"], "chunks": total["chunks"],
               "attempted": total["attempted"], "pending": total["pending"],
               "client_rss_bytes": total["rss_bytes"],
               "server_rss_bytes": memory.process_memory(self.target.pids,
                                                         pss=False)["rss_bytes"],
               "server_cpu_percent": self.server_cpu()}
        self.series.append(row)
        return total

    def server_cpu(self) -> float:
        """CPU % of the server processes since the previous sample (100 = one core)."""
        if not self._cpu_procs:
            self._cpu_procs = memory.process_tree(self.target.pids)
        total = 0.0
        for proc in self._cpu_procs:
            try:
                total += proc.cpu_percent(interval=None)
            except psutil.NoSuchProcess:
                pass
        return total

    def show(self, phase: str, total: dict, rate: float) -> None:
        """Redraw the progress line on a terminal; elsewhere print it once a second."""
        text = (f"{phase}: {total['active']}/{self.connections} active, "
                f"{total['closed']} closed, {rate:.0f} conn/s, server RSS "
                f"{self.series[-1]['server_rss_bytes'] / 1e6:.1f} MB, "
                f"CPU {self.series[-1]['server_cpu_percent']:.0f}%")
        if self.progress:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
        elif int(self.series[-1]["t"] / SAMPLE) % int(1 / SAMPLE) == 0:
            sys.stderr.write(text + "\n")

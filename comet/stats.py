"""What ``GET /stats`` serves: the hub's counters, connections by transport, memory.

:class:`Counters` has one writer, the hub (:mod:`comet.hub`); everything else
reads them through ``/stats``. Memory comes from psutil: RSS now, RSS when the
server became ready (the baseline), and their difference per held connection,
the seed's figure of merit. With workers, :func:`summed` makes the whole
server's figures out of each worker's own snapshot.
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
        #: subscribers refused by their token, by reason ("missing token", "expired",
        #: "id not covered", ...): a 401, or a 403 for "id not covered"
        self.subscribers_refused: Counter = Counter()
        #: publishers refused, by reason ("missing key", "wrong key", "not loopback",
        #: "over rate"): a 401, 403 or 429
        self.publishers_refused: Counter = Counter()
        #: messages refused over --publish-rate-per-key, by publisher (a key's fingerprint,
        #: or "loopback"): one entry per configured key at most
        self.publishes_limited: Counter = Counter()
        #: connections the hub gave up on, by End.reason ("slow consumer", "write timed out")
        self.drops: Counter = Counter()
        #: connections closed, by End.reason ("client gone", "server shutting down", ...)
        self.ends: Counter = Counter()
        #: requests and connections refused for a limit, by its kind (comet.limits):
        #: "connections per address", "request head too slow", ...
        self.limits: Counter = Counter()

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
            "subscribers_refused": dict(sorted(self.subscribers_refused.items())),
            "publishers_refused": dict(sorted(self.publishers_refused.items())),
            "publishes_limited": dict(sorted(self.publishes_limited.items())),
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


#: snapshot fields that describe one process: listed per worker, never added up
PER_PROCESS = frozenset({"pid", "uptime", "index", "accepting", "rss_per_connection",
                         "publish_keys"})


def summed(snapshots: list[dict]) -> dict:
    """The whole server's ``/stats`` from its workers' snapshots: every count added up.

    Counts add (connections, messages, drops by reason, RSS, PSS); what
    describes one process (:data:`PER_PROCESS`) does not and stays in each
    worker's entry; any other value is kept when every worker gives the
    same, and left to the entries when they differ. A figure some worker
    could not give (None: PSS unreadable) is None in the sum too: a partial
    sum would pass for the whole. ``ids`` counts an id once per worker
    holding it. The RSS per connection is made again from the sums.
    """
    total = _add(snapshots)
    held = total.get("connections", {}).get("total", 0)
    rss, baseline = total.get("rss_bytes"), total.get("rss_baseline_bytes")
    total["rss_per_connection"] = (round((rss - baseline) / held)
                                   if held and rss is not None and baseline is not None
                                   else None)
    return total


#: snapshot fields counted by reason: their sums keep the reasons sorted
BY_REASON = ("drops", "ends", "subscribers_refused", "publishers_refused",
             "publishes_limited")


def _add(snapshots: list[dict]) -> dict:
    values: dict[str, list] = {}
    for snapshot in snapshots:
        for key, value in snapshot.items():
            if key not in PER_PROCESS:
                values.setdefault(key, []).append(value)
    total = {}
    for key, found in values.items():
        if all(isinstance(v, dict) for v in found):
            total[key] = dict(sorted(_add(found).items())) if key in BY_REASON \
                else _add(found)
        elif all(v == found[0] for v in found) and not _is_number(found[0]):
            total[key] = found[0]  # what every worker agrees on: a broker's kind, its URL
        elif any(v is None for v in found):
            total[key] = None
        elif all(_is_number(v) for v in found):
            total[key] = sum(found)
    return total


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def pss(process: psutil.Process) -> int | None:
    """Proportional set size: pages shared by the forked workers counted once in all.

    RSS counts a page the master and its workers share in each of them, so
    their RSS sum overstates; PSS splits each shared page among its sharers.
    None where the kernel does not let us read it (``/proc/<pid>/smaps_rollup``).
    """
    try:
        return process.memory_full_info().pss
    except (psutil.Error, AttributeError, OSError):
        return None


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

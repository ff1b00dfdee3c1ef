"""What ``GET /stats`` serves: the hub's counters, connections by transport, memory.

:class:`Counters` has one writer, the hub (:mod:`comet.hub`); everything else
reads them through ``/stats``. Memory comes from psutil: RSS now, RSS when the
server became ready (the baseline), and their difference per held connection,
the seed's figure of merit. With workers, :func:`summed` makes the whole
server's figures out of each worker's own snapshot.
"""

from __future__ import annotations

import bisect
import os
import time
import tracemalloc
from collections import Counter

import psutil

from comet.ends import SLOW_CONSUMER
from comet.latency import PUBLISH_TO_SOCKET_BOUNDS


class Counters:
    """Every count ``/stats`` shows; written by the hub alone."""

    def __init__(self) -> None:
        self.started = time.time()
        self._process = psutil.Process()
        self.baseline_rss = self.rss()
        #: connections open now, by transport ("test", "events", "poll", "ws")
        self.open: Counter = Counter()
        #: connections admitted
        self.accepted = 0
        #: connections refused when no limit did, by why (:data:`ROOM_REFUSALS`);
        #: refusals for a limit are in ``limits``
        self.refusals: Counter = Counter()
        #: messages published here, by how: one ``/send/<id>``, the lines of a batch
        #: ``/send``, a ``/broadcast``, one per subscriber of a ``/notify`` line (a fixed set
        #: of keys: one dict lookup a publish)
        self.published = dict.fromkeys(PUBLISH_PATHS, 0)
        #: resumes (a Last-Event-ID, a long-poll's since), by whether history covered
        #: the gap: "recovered" or "missed"
        self.resumes: Counter = Counter()
        #: how long this process took to hand each broadcast to its connections
        self.fanout = Histogram(FANOUT_BOUNDS)
        #: deliveries made by this process (one message to three connections: three)
        self.messages_out = 0
        #: the same by transport (the router's counts per fan-out); sums to messages_out
        self.deliveries: Counter = Counter(dict.fromkeys(TRANSPORTS, 0))
        #: from a message's publish to its fan-out's last write here, sampled
        #: (comet.latency: at most one fan-out each SAMPLE_PERIOD)
        self.publish_to_socket = Histogram(PUBLISH_TO_SOCKET_BOUNDS)
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
        #: subscriptions between users: relations made (``follows``) and undone
        #: (``unfollows``) through this process, ``notifies`` handled here (one per
        #: line of a bulk ``/notify``)
        self.subscriptions = dict.fromkeys(("follows", "unfollows", "notifies"), 0)

    @property
    def refused(self) -> int:
        """Connections refused for want of room (full, stopping, no broker)."""
        return sum(self.refusals.values())

    @property
    def messages_in(self) -> int:
        """Messages published here, whatever the path."""
        return sum(self.published.values())

    @property
    def held(self) -> int:
        """Connections open now, whatever their transport."""
        return sum(self.open.values())

    def rss(self) -> int:
        return self._process.memory_info().rss

    def open_files(self) -> int | None:
        """Descriptors open in this process (sockets included): what the open-files
        limit bounds. None where the system will not say."""
        try:
            return self._process.num_fds()
        except (psutil.Error, OSError):
            return None

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
            "refused_reasons": dict(sorted(self.refusals.items())),
            "subscribers_refused": dict(sorted(self.subscribers_refused.items())),
            "publishers_refused": dict(sorted(self.publishers_refused.items())),
            "publishes_limited": dict(sorted(self.publishes_limited.items())),
            "ids": ids,
            "messages": {"in": self.messages_in, "out": self.messages_out,
                         "dropped": self.messages_dropped},
            "published": dict(self.published),
            "subscriptions": dict(self.subscriptions),
            "deliveries": dict(sorted(self.deliveries.items())),
            "resumes": dict(sorted(self.resumes.items())),
            "fanout_seconds": self.fanout.snapshot(),
            "publish_to_socket_seconds": self.publish_to_socket.snapshot(),
            "slow_consumers": self.drops[SLOW_CONSUMER.reason],
            "drops": dict(sorted(self.drops.items())),
            "ends": dict(sorted(self.ends.items())),
            "timers": timers,
            "rss_bytes": rss,
            "rss_baseline_bytes": self.baseline_rss,
            "rss_per_connection": round((rss - self.baseline_rss) / held) if held else None,
            "open_files": self.open_files(),
        }


#: the transports, by the names connections are counted under
TRANSPORTS = ("test", "events", "poll", "ws")

#: why admission refuses a connection when no limit does (``refused_reasons`` in
#: /stats, the ``reason`` label of ``comet_connections_refused_total``)
SHUTTING_DOWN = "shutting down"
BROKER_DOWN = "broker down"
FULL = "server full"
ROOM_REFUSALS = (FULL, SHUTTING_DOWN, BROKER_DOWN)

#: how a message reached the hub (``published`` in /stats, a label of /metrics)
PUBLISH_PATHS = ("send", "batch", "broadcast", "notify")

#: upper bounds (seconds) of the broadcast fan-out histogram: 0.1 ms (a few
#: connections) to 10 s (far past a process's 19,000 connections)
FANOUT_BOUNDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted in fixed buckets, Prometheus's way, without its client.

    Kept in the hub's counters and shown in ``/stats`` as plain numbers, so a
    worker's histogram adds up with its siblings' through :func:`summed` like
    every other count; ``/metrics`` turns the sums into a histogram family.
    One observation is a bisect and two additions.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: observations per bucket, not cumulative; the last is above every bound
        self.counts = [0] * (len(bounds) + 1)
        #: the sum of every observation
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> dict:
        """Cumulative counts by upper bound (``"+Inf"`` last), the sum and the count."""
        cumulative, running = {}, 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative[bound] = running
        return {"buckets": cumulative, "sum": self.total, "count": running}


#: snapshot fields that describe one process: listed per worker, never added up
PER_PROCESS = frozenset({"pid", "uptime", "index", "accepting", "rss_per_connection",
                         "publish_keys"})


def summed(snapshots: list[dict]) -> dict:
    """The whole server's ``/stats`` from its workers' snapshots: every count added up.

    Counts add (connections, messages, drops by reason, RSS, PSS); what
    describes one process (:data:`PER_PROCESS`) does not and stays in each
    worker's entry; a level (:data:`HIGHEST`) is the highest worker's; any
    other value is kept when every worker gives the same, and left to the
    entries when they differ. A figure some worker
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
             "publishes_limited", "refused_reasons", "resumes", "deliveries")

#: snapshot fields that are each worker's own level, not a count: the whole server's
#: is the highest (a worker's pub/sub lag; added up they would mean nothing)
HIGHEST = frozenset({"pubsub_lag_seconds"})


def _add(snapshots: list[dict]) -> dict:
    values: dict[str, list] = {}
    for snapshot in snapshots:
        for key, value in snapshot.items():
            if key not in PER_PROCESS:
                values.setdefault(key, []).append(value)
    total = {}
    for key, found in values.items():
        if key in HIGHEST:
            total[key] = max((v for v in found if v is not None), default=None)
        elif all(isinstance(v, dict) for v in found):
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

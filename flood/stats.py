"""The flood's counters, their snapshots, and how snapshots from several processes sum.

A snapshot is a plain dict (it crosses process boundaries as one JSON line), so
everything here is pure: counting, summing, and the seed's ``Stats: {A,C,K}`` line.
Active means the response head arrived (the seed's ``stream_start``); Closed means a
stream ended for any reason, or a connection never became a stream.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from flood import latency

#: Snapshot keys that add up across processes.
SUMMED = ("active", "closed", "chunks", "attempted", "connected", "rss_bytes", "pending",
          "rss_ready_bytes")
#: Snapshot keys where the sum is the maximum or minimum over processes.
LATEST = ("last_connect",)
EARLIEST = ("first_connect",)


def own_rss() -> int:
    """This process's resident bytes from /proc (cheap enough to read every second)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def reason_kind(reason: str) -> str:
    """The close reason without the URL and details, for the summary's tally."""
    return reason.split(" (", 1)[0].split(": b'", 1)[0].split(" b'", 1)[0]


class Counters:
    """One process's tallies; the flood mutates these directly for speed."""

    __slots__ = ("active", "closed", "chunks", "attempted", "connected", "pending",
                 "peak_active", "first_connect", "last_connect", "reasons", "latency",
                 "rss_ready")

    def __init__(self) -> None:
        self.active = 0         #: streams whose 200 head arrived and that are still open
        self.closed = 0         #: streams ended plus connections that never became streams
        self.chunks = 0         #: data chunks received (the last chunk is not one)
        self.attempted = 0      #: connections started
        self.connected = 0      #: streams that ever became Active
        self.pending = 0        #: connecting, head not yet read
        self.peak_active = 0
        self.first_connect = 0.0  #: time the first stream became Active
        self.last_connect = 0.0   #: time the latest stream became Active
        self.reasons: Counter[str] = Counter()
        self.latency = latency.Latency()
        self.rss_ready = 0      #: this process's RSS before its first connection

    def opened(self, now: float) -> None:
        self.active += 1
        self.connected += 1
        if self.active > self.peak_active:
            self.peak_active = self.active
        if not self.first_connect:
            self.first_connect = now
        self.last_connect = now

    def close(self, reason: str, was_active: bool) -> None:
        if was_active:
            self.active -= 1
        self.closed += 1
        self.reasons[reason_kind(reason)] += 1

    def snapshot_counts(self) -> dict:
        """The counts a progress line reads, without the RSS and latency of a snapshot."""
        return {"active": self.active, "attempted": self.attempted, "pending": self.pending,
                "connected": self.connected, "first_connect": self.first_connect,
                "last_connect": self.last_connect}

    def snapshot(self) -> dict:
        return {
            "t": time.time(),
            "active": self.active, "closed": self.closed, "chunks": self.chunks,
            "attempted": self.attempted, "connected": self.connected, "pending": self.pending,
            "peak_active": self.peak_active,
            "first_connect": self.first_connect, "last_connect": self.last_connect,
            "reasons": dict(self.reasons),
            "rss_bytes": own_rss(), "rss_ready_bytes": self.rss_ready,
            "hist": self.latency.encode(),
        }


def sum_snapshots(snaps: list[dict]) -> dict:
    """One snapshot for the whole flood. Peak active sums per-process peaks (an upper bound)."""
    total: dict = {key: 0 for key in SUMMED}
    total["t"] = max((s["t"] for s in snaps), default=time.time())
    total["peak_active"] = sum(s["peak_active"] for s in snaps)
    firsts = [s["first_connect"] for s in snaps if s["first_connect"]]
    total["first_connect"] = min(firsts, default=0.0)
    total["last_connect"] = max((s["last_connect"] for s in snaps), default=0.0)
    reasons: Counter[str] = Counter()
    for snap in snaps:
        for key in SUMMED:
            total[key] += snap[key]
        reasons.update(snap["reasons"])
    total["reasons"] = dict(reasons)
    total["latency"] = latency.describe(latency.merge([s["hist"] for s in snaps]))
    return total


def stats_line(snap: dict) -> str:
    """The seed's line, exactly: ``Stats: {Active,Closed,Chunks}``."""
    return f"Stats: {{{snap['active']},{snap['closed']},{snap['chunks']}}}"


def accept_rate(snap: dict) -> float | None:
    """Streams per second between the first and the latest stream start."""
    span = snap["last_connect"] - snap["first_connect"]
    if snap["connected"] < 2 or span <= 0:
        return None
    return (snap["connected"] - 1) / span


def client_kb_per_conn(snap: dict) -> float | None:
    """Flood memory per held stream: RSS growth since before the first connection."""
    if not snap["active"] or not snap["rss_ready_bytes"]:
        return None
    return (snap["rss_bytes"] - snap["rss_ready_bytes"]) / snap["active"] / 1024


def summary_lines(snap: dict, elapsed: float) -> list[str]:
    """The end-of-run report a person reads; the JSON file carries the same numbers."""
    rate = accept_rate(snap)
    lines = [
        "Summary:",
        f"  elapsed          {elapsed:.1f} s",
        f"  attempted        {snap['attempted']}",
        f"  connected        {snap['connected']}",
        f"  active at end    {snap['active']}",
        f"  closed           {snap['closed']}",
        f"  chunks           {snap['chunks']}",
        f"  accept rate      {rate:.0f} streams/s" if rate else "  accept rate      -",
        f"  client RSS       {snap['rss_bytes'] / 1e6:.1f} MB "
        f"({snap['rss_ready_bytes'] / 1e6:.1f} MB before connecting)",
    ]
    per_conn = client_kb_per_conn(snap)
    if per_conn is not None:
        lines.append(f"  client memory    {per_conn:.2f} KB per held stream")
    lat = snap["latency"]
    if lat["count"]:
        lines.append(f"  latency          p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                     f"max {lat['max_ms']:.1f} ms over {lat['count']} messages")
    for reason, count in sorted(snap["reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  closed: {count:>8}  {reason}")
    return lines

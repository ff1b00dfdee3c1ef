"""What a bench run measures, of the server under test (:mod:`flood.target`).

:class:`Timeline` samples the flood's counts, the ramp rate, the server's RSS and CPU
and the machine's memory by component (the server's PSS, the flood, Redis, kernel slab,
TCP buffers, MemAvailable) every :data:`SAMPLE` seconds (the JSON's ``series``, the PNG's
curves, the progress line).
The functions are the measurements taken while the flood holds its connections:
memory before and after (docs/design.rst's method, :mod:`flood.memory`, and the
server's Redis, :mod:`flood.redisproc`), the timed broadcast fan-out, ``--unread``
filling every socket buffer, ``--churn`` (the clients leave; the server should give
its memory back), and the per-connection figures. Each returns the JSON fragment it
adds.

One module because it is one subject: every figure is read from the server's pids or
asked of its HTTP API, and a measurement waits on the timeline's samples. The server
itself (starting it, waiting for it, stopping every process it is made of) is
:mod:`flood.target`'s; the order of the steps is :class:`flood.bench.Bench`'s; the
wording of what is printed, :mod:`flood.benchtable`'s.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque

import gevent
import psutil
import requests

from flood import benchtable, latency, memory, redisproc, stats
from flood.procs import Children
from flood.progress import ProgressLine
from flood.target import ServerUnderTest

#: Seconds between samples while ramping and holding (also the flood's snapshot rate).
SAMPLE = 0.25
#: Seconds the ramp rate of a sample is measured over.
RATE_WINDOW = 1.0
#: Seconds between readings of the server's PSS at least; reading it walks every
#: process's page tables (34 ms for 57 idle processes here), so it is also read no more
#: often than keeps that under 1/PSS_SHARE of the time.
PSS_EVERY = 1.0
PSS_SHARE = 20


class Timeline:
    """The rows sampled so far, timed from the start of the run."""

    def __init__(self, server: ServerUnderTest, connections: int, quiet: bool = False) -> None:
        self.server = server
        self.connections = connections
        self.series: list[dict] = []
        self.t0 = time.time()
        #: the live line on stderr: in place on a terminal, else every few seconds
        self.line = ProgressLine(sys.stderr, sys.stderr.isatty(), quiet=quiet)
        self._cpu_procs: dict[int, psutil.Process] = {}
        #: (monotonic time, connections ever made) over the last RATE_WINDOW: the ramp rate
        self._connected: deque[tuple[float, int]] = deque()
        #: the server's latest PSS reading, and when the next one is due (monotonic)
        self._pss = (0, 0.0)

    def elapsed(self) -> float:
        """Seconds since the run began, as every ``t`` in the JSON counts them."""
        return round(time.time() - self.t0, 3)

    def log(self, text: str) -> None:
        """A line on stderr, above a progress line drawn in place."""
        self.line.above(text)

    def sample(self, children: Children) -> dict:
        """Append one row; the flood's summed snapshot, for the caller's own checks."""
        total = stats.sum_snapshots(children.snapshots())
        row = {"t": self.elapsed(), "active": total["active"],
               "closed": total["closed"], "chunks": total["chunks"],
               "attempted": total["attempted"], "pending": total["pending"],
               "ramp_per_s": self.ramp_rate(total["connected"]),
               "client_rss_bytes": total["rss_bytes"],
               "server_rss_bytes": memory.process_memory(self.server.pids,
                                                         pss=False)["rss_bytes"],
               "server_cpu_percent": self.server_cpu(), **self.memory()}
        self.series.append(row)
        return total

    def ramp_rate(self, connected: int) -> float:
        """New connections a second over the last :data:`RATE_WINDOW` (the first sample: 0)."""
        now = time.monotonic()
        window = self._connected
        window.append((now, connected))
        while len(window) > 2 and now - window[1][0] >= RATE_WINDOW:
            window.popleft()
        then, before = window[0]
        return (connected - before) / (now - then) if now > then else 0.0

    def memory(self) -> dict:
        """The machine's memory by component, for the PNG's memory panel.

        Everything but the server's PSS is one short /proc read (meminfo, sockstat,
        Redis's statm), so it is read at every sample; the PSS is the latest reading
        (:data:`PSS_EVERY`). The flood's RSS is in the row already, as its processes
        report it. ``redis_rss_bytes`` is None unless bench started that Redis.
        """
        pss, due = self._pss
        if time.monotonic() >= due:
            began = time.monotonic()
            pss = memory.pss_sum(self.server.pids)
            took = time.monotonic() - began
            self._pss = (pss, began + max(PSS_EVERY, PSS_SHARE * took))
        kernel = memory.meminfo()
        return {"server_pss_bytes": pss, "redis_rss_bytes": self.redis_rss(),
                "slab_bytes": kernel.get("Slab"),
                "tcp_mem_bytes": (memory.sockstat().get("mem") or 0) * memory.PAGE,
                "mem_available_bytes": kernel.get("MemAvailable"),
                "mem_used_bytes": memory.used(kernel)}

    def redis_rss(self) -> int | None:
        pid = self.server.redis_pid
        if pid is None:
            return None
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            return None

    def server_cpu(self) -> float:
        """CPU % of the server processes since the previous sample (100 = one core).

        Its processes are found again each time (a restarted worker counts from its
        first sample on); a process object is kept between samples because its CPU %
        is measured from the previous call on that same object.
        """
        total = 0.0
        now: dict[int, psutil.Process] = {}
        for proc in self.server.processes():
            proc = now[proc.pid] = self._cpu_procs.get(proc.pid, proc)
            try:
                total += proc.cpu_percent(interval=None)
            except psutil.NoSuchProcess:
                pass
        self._cpu_procs = now
        return total

    def show(self, phase: str, total: dict, rate: float, eta: float | None = None) -> None:
        """The progress line: redrawn on a terminal, elsewhere a line every few seconds."""
        self.line.show(benchtable.progress(phase, total, self.connections, rate,
                                           self.series[-1], eta))


def snapshot(server: ServerUnderTest, timeline: Timeline) -> dict:
    """Server, Redis and kernel memory at one moment, with /stats to say what the server held."""
    redis = None
    if server.redis_url:
        redis = gevent.get_hub().threadpool.apply(
            redisproc.memory, (server.redis_url, server.redis_pid))
    return {"server": memory.process_memory(server.pids), "kernel": memory.kernel(),
            "redis": redis, "server_stats": server.whole_stats(), "t": timeline.elapsed()}


def fanout(server: ServerUnderTest, timeline: Timeline, children: Children, expected: int,
           broadcasts: int, timeout: float) -> dict:
    """``--broadcasts`` timed broadcasts, one after another; the median and each."""
    runs = []
    for _ in range(broadcasts):
        runs.append(broadcast(server, timeline, children, expected, timeout))
        gevent.sleep(0.2)
    merged = latency.merge([s["hist"] for s in children.snapshots()])
    times = [r["all_received_ms"] for r in runs]
    done = sorted(t for t in times if t is not None)
    first = runs[0]
    return {"answer": first["answer"], "answer_s": first["answer_s"], "expected": expected,
            "received": first["received"], **latency.describe(merged),
            "all_received_ms": statistics.median(done) if len(done) == len(runs) else None,
            "all_received_ms_each": times,
            "deliveries_per_s": first["deliveries_per_s"],
            "broadcasts": runs, "buckets": latency.buckets(merged)}


def broadcast(server: ServerUnderTest, timeline: Timeline, children: Children, expected: int,
              timeout: float) -> dict:
    """POST /broadcast with a timestamp; wait until every held stream has it."""
    before = latency.merge([s["hist"] for s in children.snapshots()])
    count0 = before.get_total_count()
    body = latency.stamp("bench broadcast").encode()
    sent = time.time()
    try:
        answer = server.post("/broadcast", body, timeout=timeout).json()
    except (requests.RequestException, ValueError) as exc:
        answer = {"error": str(exc)}
    answered = time.time() - sent
    deadline = sent + timeout
    while time.time() < deadline:
        total = timeline.sample(children)
        if total["latency"]["count"] - count0 >= min(expected, total["active"]):
            break  # everyone still connected has it
        gevent.sleep(0.05)
    this = latency.since(latency.merge([s["hist"] for s in children.snapshots()]), before)
    figures = latency.describe(this)
    span = figures["max_ms"]
    return {"answer": answer, "answer_s": round(answered, 3), "received": figures["count"],
            **figures,
            "all_received_ms": span if figures["count"] >= expected else None,
            "deliveries_per_s": (round(figures["count"] / (span / 1000), 1)
                                 if span else None)}


def fill(server: ServerUnderTest, unread_bytes: int) -> dict:
    """--unread: send every connection --unread-bytes in 8 KiB broadcasts nobody reads."""
    size = min(8192, unread_bytes)
    sent, answers = 0, []
    while sent < unread_bytes:
        body = latency.stamp("unread " + "x" * size)[:size].encode()
        answers.append(server.post("/broadcast", body).json())
        sent += len(body)
    return {"bytes_per_connection": sent, "broadcasts": len(answers),
            "delivered": [a.get("delivered") for a in answers]}


def churn(server: ServerUnderTest, children: Children, before: dict, timeout: float) -> dict:
    """The clients leave; wait until the server holds nothing, then compare its RSS."""
    left = time.time()
    children.stop()
    children.wait(timeout=30)
    stats_now = None
    while time.time() < left + timeout:
        stats_now = server.stats()
        if stats_now and stats_now["connections"]["total"] == 0 \
                and stats_now.get("timers") == 0:
            break
        gevent.sleep(0.25)
    emptied = time.time() - left
    server.wait_idle()
    after = memory.process_memory(server.pids)
    rb = before["server"]["rss_bytes"]
    return {"empty": bool(stats_now and stats_now["connections"]["total"] == 0
                          and stats_now.get("timers") == 0),
            "empty_after_s": round(emptied, 3), "stats": stats_now,
            "rss_before": rb, "rss_after": after["rss_bytes"],
            "pss_after": after["pss_bytes"],
            "rss_percent": round(100.0 * after["rss_bytes"] / rb, 2) if rb else None}


def figures(before: dict, after: dict, ready: dict, ramp: dict, held: dict,
            fan: dict | None, server_pids: list[int], client_procs: int) -> dict:
    """What one held connection costs: each growth divided by the connections still held."""
    n = held["active"] or 1
    sb, sa = before["server"], after["server"]
    kb, ka = before["kernel"], after["kernel"]
    return {
        "held": held["active"], "closed": held["closed"], "closed_reasons": held["reasons"],
        "accept_rate_per_s": stats.accept_rate(ramp),
        "ramp_s": ramp["last_connect"] - ramp["first_connect"] if ramp["connected"] else None,
        "server_pids": server_pids, "server_processes": sa["processes"],
        "server_rss_before": sb["rss_bytes"], "server_rss_after": sa["rss_bytes"],
        "server_kb_per_conn": (sa["rss_bytes"] - sb["rss_bytes"]) / n / 1024,
        "server_pss_before": sb["pss_bytes"], "server_pss_after": sa["pss_bytes"],
        "server_pss_kb_per_conn": (sa["pss_bytes"] - sb["pss_bytes"]) / n / 1024,
        "server_pss_anon_before": sb["pss_anon_bytes"],
        "server_pss_anon_after": sa["pss_anon_bytes"],
        "server_pss_anon_kb_per_conn": _kb_per_conn(sb["pss_anon_bytes"], sa["pss_anon_bytes"], n),
        "server_by_process_before": sb["by_process"], "server_by_process_after": sa["by_process"],
        "slab_before": kb["slab_bytes"], "slab_after": ka["slab_bytes"],
        "slab_kb_per_conn": (ka["slab_bytes"] - kb["slab_bytes"]) / n / 1024,
        "tcp_mem_pages_before": kb["tcp_mem_pages"], "tcp_mem_pages_after": ka["tcp_mem_pages"],
        "tcp_mem_kb_per_conn": ((ka["tcp_mem_pages"] or 0) - (kb["tcp_mem_pages"] or 0))
        * memory.PAGE / n / 1024,
        "tcp_inuse_before": kb["tcp_inuse"], "tcp_inuse_after": ka["tcp_inuse"],
        "tcp_counters_during": {name: ka["tcp_counters"][name] - value
                                for name, value in kb["tcp_counters"].items()
                                if name in ka["tcp_counters"]},
        "client_processes": client_procs,
        "client_rss_before": ready["rss_bytes"], "client_rss_after": held["rss_bytes"],
        "client_kb_per_conn": (held["rss_bytes"] - ready["rss_bytes"]) / n / 1024,
        "server_stats_after": after["server_stats"],
        "fanout": fan,
    }


def _kb_per_conn(before: int | None, after: int | None, n: int) -> float | None:
    """The growth per connection in KB, or None where a reading is missing."""
    return None if before is None or after is None else (after - before) / n / 1024


def whole_experiment(before: dict, precheck: dict | None, series: list[dict]) -> dict | None:
    """The whole run's memory, beside what the capacity model predicted (the pre-check's).

    ``before`` is /proc/meminfo before the run started anything. The run used
    what :func:`flood.memory.used` grew to at its highest (every process the run
    started, the kernel's part of each connection, and anything else that ran
    meanwhile: it is machine-wide); the kernel's ``MemAvailable`` fell by less
    (it counts half of the sockets' reclaimable slab as free), also given.
    """
    highs = [row["mem_used_bytes"] for row in series if row.get("mem_used_bytes")]
    lows = [row["mem_available_bytes"] for row in series if row.get("mem_available_bytes")]
    start = memory.used(before)
    if not precheck or start is None or not highs:
        return None
    grew = max(highs) - start
    predicted = precheck["predicted_bytes"]
    return {"used_before_bytes": start, "used_highest_bytes": max(highs), "used_bytes": grew,
            "available_before_bytes": before.get("MemAvailable"),
            "available_lowest_bytes": min(lows) if lows else None,
            "available_fell_bytes": before["MemAvailable"] - min(lows)
            if lows and before.get("MemAvailable") else None,
            "predicted_bytes": predicted,
            "model_error_percent": round(100.0 * (predicted - grew) / grew, 1) if grew > 0
            else None}

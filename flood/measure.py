"""What a bench run measures, and the comet server it measures.

:class:`ServerUnderTest` is that server, started on a free port or given by
``--target``: its process (start, ``/health``, quiet CPU, stop), the pids its memory
is read from, and the requests bench sends it. :class:`Timeline` samples the flood's
counts and the server's RSS and CPU every :data:`SAMPLE` seconds (the JSON's
``series``, the PNG's curves, the progress line). The functions are the measurements
taken while the flood holds its connections: memory before and after (docs/design.rst's
method, :mod:`flood.memory`), the timed broadcast fan-out, ``--unread`` filling every
socket buffer, ``--churn`` (the clients leave; the server should give its memory
back), and the per-connection figures. Each returns the JSON fragment it adds.

One module because it is one subject: every figure is read from the server's pids or
asked of its HTTP API, and a measurement waits on the timeline's samples. The order
of the steps is :class:`flood.bench.Bench`'s; the wording of what is printed,
:mod:`flood.benchtable`'s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time

import gevent
import psutil
import requests

from flood import benchtable, latency, memory, redisproc, stats
from flood.procs import Children

#: Seconds between samples while ramping and holding (also the flood's snapshot rate).
SAMPLE = 0.25
#: Seconds after the server is ready before Redis is measured: Redis shrinks the query
#: buffer of a client idle for 2 s (tens of KB each, the server's connections just made),
#: and a "before" read ahead of that makes Redis seem to shrink while the flood subscribes.
REDIS_SETTLE = 3.0
#: Seconds a stopping server has: its own drain (``--shutdown-timeout``, 5 s) and a
#: master's grace for a worker past it (3 s), with room to spare.
STOP_TIMEOUT = 20.0


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 10.0):
    """A blocking request run in gevent's thread pool so the flood pipes keep draining."""
    def call():
        try:
            return requests.request(method, url, data=data, timeout=timeout)
        except requests.RequestException as exc:
            return exc
    answer = gevent.get_hub().threadpool.apply(call)
    if isinstance(answer, Exception):
        raise answer
    return answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(proc: psutil.Process) -> bool:
    """Alive (the same process, not a reused pid) and not a zombie awaiting its parent."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ServerUnderTest:
    """The server under test: one process, or a ``--workers`` master and its workers.

    Its memory and CPU are those of every process it is made of, found again at each
    reading (:attr:`pids`) because a master restarts a worker that dies, and the
    newcomer's memory is the server's as much as the one it replaced.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: The server bench started, or None when it measures ``--target``.
        self.process: subprocess.Popen | None = None
        #: The server's own process (a master, with ``--workers``): bench started it or
        #: ``--server-pid`` named it; None until then.
        self.root: int | None = args.server_pid
        #: Every process :attr:`pids` ever found, by pid, in order: what must be gone after
        #: a run. A psutil.Process knows its start time, so a pid the system gave to
        #: another process since is never signalled by mistake.
        self.seen: dict[int, psutil.Process] = {}
        #: Base URL without a trailing slash.
        self.url = (args.target or "").rstrip("/")
        #: The Redis the server uses (bench's own, or ``--redis URL``), measured with it;
        #: None: the in-process broker. A server bench starts is given it as ``--redis``.
        self.redis_url: str | None = None
        #: That Redis's pid when bench started it (its RSS by psutil); else None.
        self.redis_pid: int | None = None
        #: Where a started server's output goes, named in errors.
        self.log_path = ""
        #: When every process of the server was accepting (:meth:`wait_workers`).
        self.ready_at = 0.0

    @property
    def pids(self) -> list[int]:
        """The server's process and its children now (a master's workers), root first."""
        return [proc.pid for proc in self.processes()]

    def processes(self) -> list[psutil.Process]:
        """The server's processes now, each also kept in :attr:`seen`."""
        found = memory.process_tree([self.root]) if self.root is not None else []
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def start(self, out_dir: str) -> list[str]:
        """Start ``comet.server`` with room for the whole flood; the command, for the JSON."""
        port = self.args.port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
               "--interval", str(self.args.interval),
               "--max-connections", str(self.args.connections + 100)]
        if self.args.workers:
            cmd += ["--workers", str(self.args.workers)]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        cmd += shlex.split(self.args.server_args or "")
        self.log_path = os.path.join(out_dir, f"bench-server-{port}.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.root = self.process.pid
        return [redisproc.redacted(a) if a == self.redis_url else a for a in cmd]

    def wait_healthy(self) -> None:
        """Until /health answers 200: a server just started, or one given by --target."""
        where = f"see {self.log_path}" if self.process else "is it running?"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"bench: the server exited {self.process.returncode}; {where}")
            try:
                if _http("GET", self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            gevent.sleep(0.2)
        raise SystemExit(f"bench: no /health from {self.url} in 30 s; {where}")

    def wait_workers(self) -> None:
        """With ``--workers N``: until /stats counts N workers accepting, not just one.

        /health answers as soon as one worker accepts; a flood started then would
        all go to that one, and the memory taken before would miss the others.
        """
        want = self.args.workers or 1
        deadline = time.time() + 30
        while time.time() < deadline:
            answer = self.stats() or {}
            ready = [w for w in answer.get("workers") or [] if w.get("accepting")]
            if want < 2 or len(ready) >= want:
                self.ready_at = time.time()
                return
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"bench: the server exited {self.process.returncode}; "
                                 f"see {self.log_path}")
            gevent.sleep(0.2)
        raise SystemExit(f"bench: {want} workers not all accepting in 30 s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the server bench started, by pid; one given by --target is left running.

        SIGTERM to the master stops its workers; a worker still there once the master
        is gone (killed after its grace, or dead before bench stopped it) is stopped by
        its own pid, so no process of the run outlives it.
        """
        if self.process is None:
            return
        self.processes()  # into seen: a worker forked since the last sample
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in self.seen.values():
            if proc.pid == self.process.pid or not _running(proc):
                continue
            try:
                proc.terminate()
                proc.wait(timeout=STOP_TIMEOUT)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def stats(self) -> dict | None:
        """``/stats``, or None: a server too busy to answer must not end the run."""
        try:
            return _http("GET", self.url + "/stats", timeout=10).json()
        except (requests.RequestException, ValueError):
            return None

    def whole_stats(self, tries: int = 3) -> dict | None:
        """``/stats`` with every worker in its sums, if a few tries give that.

        A worker that does not answer its sibling in time is an ``error`` entry and
        is left out of the sums (``ids`` among them), which would then pass for the
        whole server's; the last answer is returned whatever it holds.
        """
        answer = None
        for _ in range(tries):
            answer = self.stats()
            if answer and not any("error" in w for w in answer.get("workers") or []):
                break
            gevent.sleep(0.5)
        return answer

    def wait_idle(self) -> None:
        """Warm the server up (one request of each kind), then wait for quiet CPU, and
        with Redis until its clients' buffers have settled (:data:`REDIS_SETTLE`)."""
        self.stats()
        procs = self.processes()
        for proc in procs:
            proc.cpu_percent(interval=None)  # the first call only starts the clock
        for _ in range(30):
            gevent.sleep(0.5)
            if sum(p.cpu_percent(interval=None) for p in procs) < 10:
                break
        if self.redis_url:
            gevent.sleep(max(0.0, self.ready_at + REDIS_SETTLE - time.time()))

    def post(self, path: str, body: bytes, timeout: float = 10.0) -> requests.Response:
        """POST to the server (``/broadcast``) without blocking the flood pipes."""
        return _http("POST", self.url + path, data=body, timeout=timeout)


class Timeline:
    """The rows sampled so far, timed from the start of the run."""

    def __init__(self, server: ServerUnderTest, connections: int) -> None:
        self.server = server
        self.connections = connections
        self.series: list[dict] = []
        self.t0 = time.time()
        self.progress = sys.stderr.isatty()
        self._cpu_procs: dict[int, psutil.Process] = {}

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
               "server_rss_bytes": memory.process_memory(self.server.pids,
                                                         pss=False)["rss_bytes"],
               "server_cpu_percent": self.server_cpu()}
        self.series.append(row)
        return total

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

    def show(self, phase: str, total: dict, rate: float) -> None:
        """Redraw the progress line on a terminal; elsewhere print it once a second."""
        text = benchtable.progress(phase, total, self.connections, rate, self.series[-1])
        if self.progress:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
        elif int(self.series[-1]["t"] / SAMPLE) % int(1 / SAMPLE) == 0:
            sys.stderr.write(text + "\n")


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
        "client_processes": client_procs,
        "client_rss_before": ready["rss_bytes"], "client_rss_after": held["rss_bytes"],
        "client_kb_per_conn": (held["rss_bytes"] - ready["rss_bytes"]) / n / 1024,
        "server_stats_after": after["server_stats"],
        "fanout": fan,
    }


def _kb_per_conn(before: int | None, after: int | None, n: int) -> float | None:
    """The growth per connection in KB, or None where a reading is missing."""
    return None if before is None or after is None else (after - before) / n / 1024

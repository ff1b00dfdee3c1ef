"""``python -m flood.bench``: the seed's question in one command: what does a connection cost?

Starts the comet server (or takes ``--target URL --server-pid PID``), waits until it
is idle, measures, floods ``--connections`` ``/test/`` streams at ``--rate`` through
flood processes (:mod:`flood.procs`), holds them, measures again, broadcasts one
timestamped message and times its fan-out, then prints a table and writes ``--json``
and a PNG (:mod:`flood.plot`). Memory figures follow DESIGN.md's method
(:mod:`flood.memory`). It stops every process it started.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import gevent
import psutil
import requests

from flood import benchtable, latency, memory, stats
from flood.procs import Children, procs_needed, raise_nofile
from flood.report import write_json
from flood.sources import parse_sources, port_warning
from flood.transport import TRANSPORTS
from flood.urls import generate
from flood.worker import Plan

#: Seconds between samples while ramping and holding (also the flood's snapshot rate).
SAMPLE = 0.25


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


class Bench:
    """One benchmark run; every figure lands in :attr:`result` (the JSON document)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: subprocess.Popen | None = None
        self.server_pids: list[int] = [args.server_pid] if args.server_pid else []
        self.target = (args.target or "").rstrip("/")
        self.series: list[dict] = []
        self.result: dict = {}
        self.t0 = time.time()
        self.progress = sys.stderr.isatty()
        self.client_procs = 0
        self._cpu_procs: list[psutil.Process] = []

    def log(self, text: str) -> None:
        sys.stderr.write(("\r\x1b[K" if self.progress else "") + text + "\n")
        sys.stderr.flush()

    # -- server -------------------------------------------------------------

    def start_server(self, out_dir: str) -> None:
        port = self.args.port or _free_port()
        self.target = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
               "--interval", str(self.args.interval),
               "--max-connections", str(self.args.connections + 100),
               *shlex.split(self.args.server_args or "")]
        self.server_log = os.path.join(out_dir, f"bench-server-{port}.log")
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.server_pids = [self.server.pid]
        self.result["server_command"] = cmd
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Until /health answers 200: a server just started, or one given by --target."""
        where = f"see {self.server_log}" if self.server else "is it running?"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise SystemExit(f"bench: the server exited {self.server.returncode}; {where}")
            try:
                if _http("GET", self.target + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            gevent.sleep(0.2)
        raise SystemExit(f"bench: no /health from {self.target} in 30 s; {where}")

    def stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    def server_stats(self) -> dict | None:
        try:
            return _http("GET", self.target + "/stats", timeout=10).json()
        except (requests.RequestException, ValueError):
            return None

    def wait_idle(self) -> None:
        """Warm the server up (one request of each kind), then wait for quiet CPU."""
        self.server_stats()
        procs = memory.process_tree(self.server_pids)
        for proc in procs:
            proc.cpu_percent(interval=None)  # the first call only starts the clock
        for _ in range(30):
            gevent.sleep(0.5)
            if sum(p.cpu_percent(interval=None) for p in procs) < 10:
                return

    # -- measuring ----------------------------------------------------------

    def measure(self) -> dict:
        return {"server": memory.process_memory(self.server_pids), "kernel": memory.kernel(),
                "server_stats": self.server_stats(), "t": round(time.time() - self.t0, 3)}

    def sample(self, children: Children) -> dict:
        total = stats.sum_snapshots(children.snapshots())
        row = {"t": round(time.time() - self.t0, 3), "active": total["active"],
               "closed": total["closed"], "chunks": total["chunks"],
               "attempted": total["attempted"], "pending": total["pending"],
               "client_rss_bytes": total["rss_bytes"],
               "server_rss_bytes": memory.process_memory(self.server_pids, pss=False)["rss_bytes"],
               "server_cpu_percent": self.server_cpu()}
        self.series.append(row)
        return total

    def server_cpu(self) -> float:
        """CPU % of the server processes since the previous sample (100 = one core)."""
        if not self._cpu_procs:
            self._cpu_procs = memory.process_tree(self.server_pids)
        total = 0.0
        for proc in self._cpu_procs:
            try:
                total += proc.cpu_percent(interval=None)
            except psutil.NoSuchProcess:
                pass
        return total

    def show(self, phase: str, total: dict, rate: float) -> None:
        text = (f"{phase}: {total['active']}/{self.args.connections} active, "
                f"{total['closed']} closed, {rate:.0f} conn/s, server RSS "
                f"{self.series[-1]['server_rss_bytes'] / 1e6:.1f} MB, "
                f"CPU {self.series[-1]['server_cpu_percent']:.0f}%")
        if self.progress:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
        elif int(self.series[-1]["t"] / SAMPLE) % int(1 / SAMPLE) == 0:
            sys.stderr.write(text + "\n")

    # -- the run ------------------------------------------------------------

    def flood(self, url_file: str) -> tuple[Children, dict]:
        args = self.args
        nofile = raise_nofile()
        plan = Plan(url_file=url_file, wait_ms=1000.0 / args.rate, start_at=time.time() + 1.0,
                    sources=parse_sources(args.source) if args.source else [],
                    concurrency=args.concurrency, emit_every=SAMPLE, closed_lines=5,
                    transport=args.transport, unread=args.unread)
        self.client_procs = args.procs or procs_needed(args.connections, nofile)
        children = Children(plan, self.client_procs, self.log)
        children.start()
        while not children.all_ready():
            gevent.sleep(0.05)
            if not children.running():
                raise SystemExit("bench: the flood processes exited before starting")
        ready = stats.sum_snapshots([c.ready for c in children.children])
        deadline = time.time() + 1.0 + args.connections / args.rate * 3 + 30
        last = (time.time(), 0)
        while time.time() < deadline:
            gevent.sleep(SAMPLE)
            total = self.sample(children)
            now = time.time()
            rate = (total["connected"] - last[1]) / (now - last[0])
            last = (now, total["connected"])
            self.show("ramp", total, rate)
            if total["attempted"] >= args.connections and total["pending"] == 0:
                break
        return children, ready

    def hold(self, children: Children) -> dict:
        end = time.time() + self.args.hold
        while time.time() < end:
            gevent.sleep(SAMPLE)
            self.show("hold", self.sample(children), 0)
        return stats.sum_snapshots(children.snapshots())

    def fanout(self, children: Children, expected: int) -> dict:
        """``--broadcasts`` timed broadcasts, one after another; the median and each."""
        runs = []
        for _ in range(self.args.broadcasts):
            runs.append(self.broadcast(children, expected))
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

    def broadcast(self, children: Children, expected: int) -> dict:
        """POST /broadcast with a timestamp; wait until every held stream has it."""
        before = latency.merge([s["hist"] for s in children.snapshots()])
        count0 = before.get_total_count()
        body = latency.stamp("bench broadcast").encode()
        sent = time.time()
        try:
            answer = _http("POST", self.target + "/broadcast", data=body,
                           timeout=self.args.fanout_timeout).json()
        except (requests.RequestException, ValueError) as exc:
            answer = {"error": str(exc)}
        answered = time.time() - sent
        deadline = sent + self.args.fanout_timeout
        while time.time() < deadline:
            total = self.sample(children)
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

    def fill(self) -> dict:
        """--unread: send every connection --unread-bytes in 8 KiB broadcasts nobody reads."""
        size = min(8192, self.args.unread_bytes)
        sent, answers = 0, []
        while sent < self.args.unread_bytes:
            body = latency.stamp("unread " + "x" * size)[:size].encode()
            answers.append(_http("POST", self.target + "/broadcast", data=body).json())
            sent += len(body)
        return {"bytes_per_connection": sent, "broadcasts": len(answers),
                "delivered": [a.get("delivered") for a in answers]}

    def churn(self, children: Children, before: dict) -> dict:
        """The clients leave; wait until the server holds nothing, then compare its RSS."""
        left = time.time()
        children.stop()
        children.wait(timeout=30)
        stats_now = None
        while time.time() < left + self.args.churn_timeout:
            stats_now = self.server_stats()
            if stats_now and stats_now["connections"]["total"] == 0 \
                    and stats_now.get("timers") == 0:
                break
            gevent.sleep(0.25)
        emptied = time.time() - left
        self.wait_idle()
        after = memory.process_memory(self.server_pids)
        rb = before["server"]["rss_bytes"]
        return {"empty": bool(stats_now and stats_now["connections"]["total"] == 0
                              and stats_now.get("timers") == 0),
                "empty_after_s": round(emptied, 3), "stats": stats_now,
                "rss_before": rb, "rss_after": after["rss_bytes"],
                "pss_after": after["pss_bytes"],
                "rss_percent": round(100.0 * after["rss_bytes"] / rb, 2) if rb else None}

    def run(self) -> dict:
        args = self.args
        out_dir = os.path.dirname(os.path.abspath(args.plot or args.json or "bench-out/x"))
        os.makedirs(out_dir, exist_ok=True)
        self.result.update(command=["flood.bench", *sys.argv[1:]], transport=args.transport,
                           server_args=args.server_args or "", unread=args.unread,
                           date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           connections_requested=args.connections, rate_requested=args.rate,
                           tcp=memory.tcp_buffers())
        children = None
        fd, url_file = tempfile.mkstemp(prefix="bench-urls-", suffix=".txt")
        try:
            if not args.target:
                self.start_server(out_dir)
            else:
                self.wait_healthy()
            self.result["target"] = self.target
            path = TRANSPORTS[args.transport].path
            with os.fdopen(fd, "w") as fh:
                fh.writelines(u + "\n" for u in generate(args.connections, self.target,
                                                          path=path))
            warning = port_warning({self.target: args.connections},
                                   parse_sources(args.source) if args.source else [])
            if warning:
                self.log(f"bench: {warning}")
            self.wait_idle()
            before = self.measure()
            children, ready = self.flood(url_file)
            ramp = stats.sum_snapshots(children.snapshots())
            held = self.hold(children)
            if args.unread:
                self.result["unread"] = self.fill()
                held = self.hold(children)
            after = self.measure()
            fan = None if args.unread else self.fanout(children, held["active"])
            self.result.update(self.figures(before, after, ready, ramp, held, fan))
            if args.churn:
                self.result["churn"] = self.churn(children, before)
                children = None
        finally:
            if children is not None:
                children.stop()
                children.wait(timeout=30)
            self.stop_server()
            os.unlink(url_file)
        self.result["series"] = self.series
        return self.result

    def figures(self, before: dict, after: dict, ready: dict, ramp: dict, held: dict,
                fan: dict | None) -> dict:
        n = held["active"] or 1
        sb, sa = before["server"], after["server"]
        kb, ka = before["kernel"], after["kernel"]
        return {
            "held": held["active"], "closed": held["closed"], "closed_reasons": held["reasons"],
            "accept_rate_per_s": stats.accept_rate(ramp),
            "ramp_s": ramp["last_connect"] - ramp["first_connect"] if ramp["connected"] else None,
            "server_pids": self.server_pids, "server_processes": sa["processes"],
            "server_rss_before": sb["rss_bytes"], "server_rss_after": sa["rss_bytes"],
            "server_kb_per_conn": (sa["rss_bytes"] - sb["rss_bytes"]) / n / 1024,
            "server_pss_before": sb["pss_bytes"], "server_pss_after": sa["pss_bytes"],
            "server_pss_kb_per_conn": (sa["pss_bytes"] - sb["pss_bytes"]) / n / 1024,
            "slab_before": kb["slab_bytes"], "slab_after": ka["slab_bytes"],
            "slab_kb_per_conn": (ka["slab_bytes"] - kb["slab_bytes"]) / n / 1024,
            "tcp_mem_pages_before": kb["tcp_mem_pages"], "tcp_mem_pages_after": ka["tcp_mem_pages"],
            "tcp_mem_kb_per_conn": ((ka["tcp_mem_pages"] or 0) - (kb["tcp_mem_pages"] or 0))
            * memory.PAGE / n / 1024,
            "tcp_inuse_before": kb["tcp_inuse"], "tcp_inuse_after": ka["tcp_inuse"],
            "client_processes": self.client_procs,
            "client_rss_before": ready["rss_bytes"], "client_rss_after": held["rss_bytes"],
            "client_kb_per_conn": (held["rss_bytes"] - ready["rss_bytes"]) / n / 1024,
            "server_stats_after": after["server_stats"],
            "fanout": fan,
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flood.bench",
                                description="Server + flood + measurement in one command.")
    p.add_argument("--connections", type=int, default=10000, help="streams to hold (default 10000)")
    p.add_argument("--rate", type=float, default=2000.0, help="new connections/s (default 2000)")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold before measuring")
    p.add_argument("--interval", type=float, default=10.0,
                   help="the server's tick interval when bench starts it (default 10)")
    p.add_argument("--transport", default="stream", choices=list(TRANSPORTS),
                   help="stream (/test/), sse (/events/), ws (/ws/), poll (/poll/)")
    p.add_argument("--server-args", default="",
                   help="more flags for the server bench starts: \"--hibernate off\"")
    p.add_argument("--modes", help="run once per --hibernate mode and print them side by side: "
                                   "on,off")
    p.add_argument("--broadcasts", type=int, default=1,
                   help="timed broadcasts one after another; the median and each (default 1)")
    p.add_argument("--churn", action="store_true",
                   help="after measuring, the clients leave; wait until /stats shows no "
                        "connection and no timer, then compare the server's RSS with before")
    p.add_argument("--churn-timeout", type=float, default=60.0,
                   help="seconds to wait for the server to empty (default 60)")
    p.add_argument("--unread", action="store_true",
                   help="clients never read after the head: send each --unread-bytes and "
                        "measure with the socket buffers full (no fan-out timing)")
    p.add_argument("--unread-bytes", type=int, default=65536,
                   help="bytes per connection sent with --unread, in 8 KiB broadcasts")
    p.add_argument("--port", type=int, help="port for the server bench starts (default: free)")
    p.add_argument("--target", help="use this running server instead: http://127.0.0.1:8000")
    p.add_argument("--server-pid", type=int, help="with --target: its pid, for memory figures")
    p.add_argument("--procs", type=int, help="flood processes (default: as the count needs)")
    p.add_argument("--source", help="flood source addresses, as flood --source")
    p.add_argument("--concurrency", type=int, default=256, help="connects at once per process")
    p.add_argument("--fanout-timeout", type=float, default=60.0,
                   help="seconds to wait for the broadcast to reach everyone (default 60)")
    p.add_argument("--json", help="write every figure and the time series here")
    p.add_argument("--plot", default="bench-out/bench.png", help="PNG path (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return p


def _checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.target and not args.server_pid:
        parser.error("--target needs --server-pid (bench measures that process's memory)")
    if args.connections < 1 or args.rate <= 0 or args.broadcasts < 1:
        parser.error("--connections, --rate and --broadcasts must be positive")
    if args.target and (args.server_args or args.modes):
        parser.error("--server-args and --modes need a server bench starts, not --target")
    if args.unread and args.transport == "poll":
        parser.error("--unread with poll: an unread poll never asks again; use another transport")
    if args.modes:
        args.modes = [m.strip() for m in args.modes.split(",")]
        if not set(args.modes) <= {"on", "off"} or len(set(args.modes)) != len(args.modes):
            parser.error("--modes takes on, off or both: on,off")
    if args.no_plot:
        args.plot = None
    return args


def run_one(args: argparse.Namespace) -> dict:
    """One bench run and its PNG (when asked)."""
    result = Bench(args).run()
    if args.plot:
        from flood.plot import write_plot
        fan = result["fanout"] or {"buckets": []}
        write_plot(args.plot, result["series"], fan["buckets"],
                   f"{result['held']} connections to {result['target']}, {result['date']}")
        result["plot"] = args.plot
    return result


def main(argv: list[str] | None = None) -> int:
    args = _checked(build_parser(), argv)
    if not args.modes:
        result = run_one(args)
        print("\n".join(benchtable.table(result)))
        held = result["held"]
    else:
        runs = {}
        for mode in args.modes:
            one = copy.copy(args)
            one.server_args = f"{args.server_args} --hibernate {mode}".strip()
            if args.plot:
                root, ext = os.path.splitext(args.plot)
                one.plot = f"{root}-{mode}{ext}"
            runs[mode] = run_one(one)
        print("\n".join(benchtable.side_by_side(runs)))
        result = {"command": ["flood.bench", *(sys.argv[1:] if argv is None else argv)],
                  "date": runs[args.modes[0]]["date"], "modes": runs}
        held = min(r["held"] for r in runs.values())
    if args.json:
        write_json(args.json, result)
        print(f"json: {args.json}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

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
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time

import gevent
import psutil
import requests

from flood import latency, memory, stats
from flood.procs import Children, procs_needed, raise_nofile
from flood.report import write_json
from flood.sources import parse_sources, port_warning
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
               "--max-connections", str(self.args.connections + 100)]
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
                    concurrency=args.concurrency, emit_every=SAMPLE, closed_lines=5)
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
        """POST /broadcast with a timestamp; wait until every held stream has it."""
        before = stats.sum_snapshots(children.snapshots())["latency"]["count"]
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
            if total["latency"]["count"] - before >= min(expected, total["active"]):
                break  # everyone still connected has it
            gevent.sleep(0.05)
        merged = latency.merge([s["hist"] for s in children.snapshots()])
        figures = latency.describe(merged)
        span = figures["max_ms"]
        return {"answer": answer, "answer_s": round(answered, 3), "expected": expected,
                "received": figures["count"] - before, **figures,
                "all_received_ms": span if figures["count"] - before >= expected else None,
                "deliveries_per_s": (round(figures["count"] / (span / 1000), 1)
                                     if span else None),
                "buckets": latency.buckets(merged)}

    def run(self) -> dict:
        args = self.args
        out_dir = os.path.dirname(os.path.abspath(args.plot or args.json or "bench-out/x"))
        os.makedirs(out_dir, exist_ok=True)
        self.result.update(command=["flood.bench", *sys.argv[1:]],
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
            with os.fdopen(fd, "w") as fh:
                fh.writelines(u + "\n" for u in generate(args.connections, self.target))
            warning = port_warning({self.target: args.connections},
                                   parse_sources(args.source) if args.source else [])
            if warning:
                self.log(f"bench: {warning}")
            self.wait_idle()
            before = self.measure()
            children, ready = self.flood(url_file)
            ramp = stats.sum_snapshots(children.snapshots())
            held = self.hold(children)
            after = self.measure()
            fan = self.fanout(children, held["active"])
            self.result.update(self.figures(before, after, ready, ramp, held, fan))
        finally:
            if children is not None:
                children.stop()
                children.wait(timeout=30)
            self.stop_server()
            os.unlink(url_file)
        self.result["series"] = self.series
        return self.result

    def figures(self, before: dict, after: dict, ready: dict, ramp: dict, held: dict,
                fan: dict) -> dict:
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


def table(r: dict) -> list[str]:
    """The human answer; the JSON holds the same figures unrounded."""
    mb = 1e6
    fan = r["fanout"]
    rate = r["accept_rate_per_s"]
    rows = [
        ("connections requested", f"{r['connections_requested']} at {r['rate_requested']:g}/s"),
        ("held", f"{r['held']}"),
        ("closed", f"{r['closed']} {r['closed_reasons'] or ''}".strip()),
        ("accept rate", f"{rate:.0f} conn/s over {r['ramp_s']:.2f} s" if rate else "-"),
        ("server RSS", f"{r['server_rss_before'] / mb:.1f} -> {r['server_rss_after'] / mb:.1f} MB"
                       f" = {r['server_kb_per_conn']:.2f} KB/conn"
                       f" ({r['server_processes']} process(es))"),
        ("server PSS", f"{r['server_pss_before'] / mb:.1f} -> {r['server_pss_after'] / mb:.1f} MB"
                       f" = {r['server_pss_kb_per_conn']:.2f} KB/conn"),
        ("kernel slab", f"{(r['slab_after'] - r['slab_before']) / mb:+.1f} MB"
                        f" = {r['slab_kb_per_conn']:.2f} KB/conn (both loopback ends)"),
        ("kernel TCP mem", f"{r['tcp_mem_pages_before']} -> {r['tcp_mem_pages_after']} pages"
                           f" = {r['tcp_mem_kb_per_conn']:.2f} KB/conn"),
        ("flood client RSS", f"{r['client_rss_before'] / mb:.1f} -> "
                             f"{r['client_rss_after'] / mb:.1f} MB"
                             f" = {r['client_kb_per_conn']:.2f} KB/conn"
                             f" ({r['client_processes']} process(es))"),
        ("broadcast fan-out", _fanout_text(fan)),
        ("tcp_rmem / tcp_wmem", f"{' '.join(r['tcp']['tcp_rmem'] or [])} / "
                                f"{' '.join(r['tcp']['tcp_wmem'] or [])}"),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def _fanout_text(fan: dict) -> str:
    if not fan.get("count"):
        return f"nothing received (answer {fan.get('answer')})"
    done = (f"all {fan['expected']} in {fan['all_received_ms']:.0f} ms"
            if fan["all_received_ms"] is not None
            else f"{fan['received']} of {fan['expected']} received")
    return (f"{done}: p50 {fan['p50_ms']:.1f} ms, p99 {fan['p99_ms']:.1f} ms, "
            f"max {fan['max_ms']:.1f} ms, {fan['deliveries_per_s'] or 0:.0f} deliveries/s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flood.bench",
                                description="Server + flood + measurement in one command.")
    p.add_argument("--connections", type=int, default=10000, help="streams to hold (default 10000)")
    p.add_argument("--rate", type=float, default=2000.0, help="new connections/s (default 2000)")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold before measuring")
    p.add_argument("--interval", type=float, default=10.0,
                   help="the server's tick interval when bench starts it (default 10)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target and not args.server_pid:
        parser.error("--target needs --server-pid (bench measures that process's memory)")
    if args.connections < 1 or args.rate <= 0:
        parser.error("--connections and --rate must be positive")
    if args.no_plot:
        args.plot = None
    bench = Bench(args)
    result = bench.run()
    for line in table(result):
        print(line)
    if args.plot:
        from flood.plot import write_plot
        write_plot(args.plot, result["series"], result["fanout"]["buckets"],
                   f"{result['held']} connections to {result['target']}, {result['date']}")
        result["plot"] = args.plot
        print(f"plot: {args.plot}")
    if args.json:
        write_json(args.json, result)
        print(f"json: {args.json}")
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())

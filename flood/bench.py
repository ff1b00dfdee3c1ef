"""``python -m flood.bench``: the seed's question in one command: what does a connection cost?

First checks that the run fits this host (:mod:`flood.precheck`: memory, files, ports,
backlog) and refuses, starting nothing, when it does not. Then starts Redis
(``--redis-server``) and the comet server (or takes ``--target URL --server-pid PID``),
waits until it is idle, measures, floods ``--connections`` ``/test/`` streams at
``--rate`` through flood processes (:mod:`flood.procs`), holds them, measures again,
broadcasts one timestamped message and times its fan-out, then prints a table and
writes ``--json`` and a PNG (:mod:`flood.plot`). Memory figures follow docs/design.rst's method
(:mod:`flood.memory`). It stops every process it started. ``--modes on,off`` runs the
whole bench once per ``--hibernate`` mode and prints the runs side by side.

This module owns the order of a run, the command line and ``--modes``: reading it
tells what a run does, step by step. The server under test is :mod:`flood.target`'s,
its Redis's process :mod:`flood.redisproc`'s, its sampled series and each measurement
:mod:`flood.measure`'s; the wording of everything printed is :mod:`flood.benchtable`'s
(pure formatting).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import signal
import sys
import tempfile
import time

import gevent

from comet import capacity
from comet.hostlimits import FLOOD_FD_MARGIN, processes_needed, raise_open_files_limit
from flood import (
    benchtable,
    measure,
    memory,
    netns,
    precheck,
    progress,
    publishing,
    publishkey,
    redisproc,
    stats,
)
from flood.measure import SAMPLE, Timeline
from flood.procs import Children
from flood.report import write_json
from flood.sources import parse_sources, port_warning
from flood.target import ServerUnderTest
from flood.transport import TRANSPORTS
from flood.urls import generate
from flood.worker import Plan

#: connections being opened at once over all the flood processes, by default
CONNECTS_IN_FLIGHT = 4096


def connects_at_once(processes: int) -> int:
    """Each flood process's share of :data:`CONNECTS_IN_FLIGHT` (16 to 256 each).

    What is in flight waits in the server's accept queues: at a million, 51
    processes of 256 kept ~12,000 there, ~4 s of the server's pace, and in one
    run of four a worker's pause pushed 1,145 past the flood's 10 s timeout.
    With 2,048 in all none closed, but the ramp slowed to 2,958/s: a handshake
    at a million on two cores takes longer than 0.6 s. 4,096 is ~1.3 s of
    waiting at 3,200 a second.
    """
    return max(16, min(256, CONNECTS_IN_FLIGHT // processes))


def ramp_eta(total: dict, connections: int, elapsed: float) -> float | None:
    """Seconds until every connection was tried, at the pace of the ramp so far."""
    return progress.eta(total["attempted"], connections, elapsed)


class Bench:
    """One benchmark run; every figure lands in :attr:`result` (the JSON document)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = ServerUnderTest(args)
        self.timeline = Timeline(self.server, args.connections, quiet=args.quiet)
        self.result: dict = {}
        self.client_procs = 0
        #: the redis-server this run started (``--redis-server``), stopped with the server
        self.redis: redisproc.RedisProcess | None = None

    def flood(self, url_file: str) -> tuple[Children, dict]:
        """Start the flood processes and sample until every connection was tried."""
        args = self.args
        nofile = raise_open_files_limit()
        self.client_procs = args.procs or processes_needed(args.connections, nofile,
                                                           FLOOD_FD_MARGIN)
        concurrency = args.concurrency or connects_at_once(self.client_procs)
        self.result["flood_concurrency"] = concurrency
        plan = Plan(url_file=url_file, wait_ms=1000.0 / args.rate, start_at=time.time() + 1.0,
                    sources=parse_sources(args.source) if args.source else [],
                    concurrency=concurrency, emit_every=SAMPLE, closed_lines=5,
                    transport=args.transport, unread=args.unread)
        children = Children(plan, self.client_procs, self.timeline.log)
        children.start()
        while not children.all_ready():
            gevent.sleep(0.05)
            if not children.running():
                raise SystemExit("bench: the flood processes exited before starting")
        ready = stats.sum_snapshots([c.ready for c in children.children])
        deadline = time.time() + 1.0 + args.connections / args.rate * 3 + 30
        began = last = (time.time(), 0)
        while time.time() < deadline:
            gevent.sleep(SAMPLE)
            total = self.timeline.sample(children)
            now = time.time()
            rate = (total["connected"] - last[1]) / (now - last[0])
            last = (now, total["connected"])
            eta = ramp_eta(total, args.connections, now - began[0])
            self.timeline.show("ramp", total, rate, eta)
            if total["attempted"] >= args.connections and total["pending"] == 0:
                break
        return children, ready

    def hold(self, children: Children) -> dict:
        """Keep sampling for --hold seconds so the server settles before it is measured."""
        end = time.time() + self.args.hold
        while time.time() < end:
            gevent.sleep(SAMPLE)
            self.timeline.show("hold", self.timeline.sample(children), 0)
        return stats.sum_snapshots(children.snapshots())

    def use_redis(self, out_dir: str) -> None:
        """The server's Redis: one started now (``--redis-server``), or ``--redis URL``.

        Started before the server, which needs it at start, and stopped after it in
        :meth:`run`'s cleanup, which every way out of a run passes through.
        """
        if self.args.redis_server:
            self.redis = redisproc.RedisProcess(out_dir)
            self.redis.start()
            self.server.redis_url, self.server.redis_pid = self.redis.url, self.redis.pid
            self.result["redis_log"] = self.redis.log_path
        elif self.args.redis:
            self.server.redis_url = self.args.redis

    def run(self) -> dict:
        args = self.args
        server = self.server
        out_dir = os.path.dirname(os.path.abspath(args.plot or args.json or "bench-out/x"))
        os.makedirs(out_dir, exist_ok=True)
        self.result.update(command=args.command, transport=args.transport,
                           server_args=args.server_args or "", unread=args.unread,
                           date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           connections_requested=args.connections, rate_requested=args.rate,
                           workers=args.workers, precheck=getattr(args, "precheck", None),
                           netns=getattr(args, "netns_info", None),
                           tcp=memory.tcp_buffers(), meminfo_before=memory.meminfo())
        children = None
        fd, url_file = tempfile.mkstemp(prefix="bench-urls-", suffix=".txt")
        try:
            self.use_redis(out_dir)
            if not args.target:
                self.result["server_command"] = server.start(out_dir)
            server.wait_healthy()
            server.wait_workers()
            self.result["target"] = server.url
            path = TRANSPORTS[args.transport].path
            with os.fdopen(fd, "w") as fh:
                fh.writelines(u + "\n" for u in generate(args.connections, server.url,
                                                          path=path))
            warning = port_warning({server.url: args.connections},
                                   parse_sources(args.source) if args.source else [])
            if warning:
                self.timeline.log(f"bench: {warning}")
            warm = args.warmup if args.warmup is not None else (
                WARMUP_PER_WORKER * args.workers if (args.workers or 1) > 1 else 0)
            if warm:
                self.result["warmup"] = server.warm_up(warm, self.timeline)
            server.wait_idle()
            before = measure.snapshot(server, self.timeline)
            children, ready = self.flood(url_file)
            ramp = stats.sum_snapshots(children.snapshots())
            held = self.hold(children)
            if args.unread:
                self.result["unread"] = measure.fill(server, args.unread_bytes)
                held = self.hold(children)
            after = measure.snapshot(server, self.timeline)
            fan = None if args.unread else measure.fanout(
                server, self.timeline, children, held["active"], args.broadcasts,
                args.fanout_timeout)
            self.result.update(measure.figures(before, after, ready, ramp, held, fan,
                                               server.pids, self.client_procs))
            self.result["flood_urls_per_process"] = -(-args.connections // self.client_procs)
            if args.publish_rate and args.social:
                self.result["social"] = publishing.along_a_graph(
                    server.url, self.timeline, children, args.connections, args.social,
                    args.publish_rate, args.publish_for, args.publish_batch,
                    args.publish_concurrency, args.publish_key_file, server.redis_url)
            elif args.publish_rate:
                self.result["per_user"] = publishing.per_user(
                    server.url, self.timeline, children, args.connections, args.publish_rate,
                    args.publish_for, args.publish_batch, args.publish_concurrency,
                    args.publish_key_file)
            if server.redis_url:
                self.result.update(redisproc.figures(server.redis_url, server.redis_pid,
                                                     before, after, held))
            if args.churn:
                self.result["churn"] = measure.churn(server, children, before,
                                                     args.churn_timeout)
                children = None
        finally:
            if children is not None:
                children.stop()
                children.wait(timeout=30)
            try:
                server.stop()
            finally:
                if self.redis is not None:
                    self.redis.stop()
                os.unlink(url_file)
        self.result["server_pids_seen"] = list(server.seen)
        self.result["series"] = self.timeline.series
        self.result["whole"] = measure.whole_experiment(self.result["meminfo_before"],
                                                        self.result.get("precheck"),
                                                        self.timeline.series)
        return self.result


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
    p.add_argument("--workers", type=int,
                   help="the server bench starts runs N worker processes under a master "
                        "(comet.server --workers N); above 1 needs --redis-server or --redis")
    p.add_argument("--warmup", type=int, metavar="N",
                   help="before the 'before' reading, open N /test/ streams, broadcast to "
                        "them, close them (default: 200 per worker with --workers above 1, "
                        "else 0): each worker then has touched the pages it shares with "
                        "the master, so their copies count in its base, not per connection")
    p.add_argument("--redis-server", action="store_true",
                   help="start a redis-server for the run (free 127.0.0.1 port, persistence "
                        "off), give it to the server as --redis, measure it, stop it")
    p.add_argument("--redis", metavar="URL",
                   help="a running Redis for the server (or the one --target uses): measured "
                        "by INFO, never started or stopped")
    p.add_argument("--port", type=int, help="port for the server bench starts (default: free)")
    p.add_argument("--target", help="use this running server instead: http://127.0.0.1:8000")
    p.add_argument("--server-pid", type=int, help="with --target: its pid, for memory figures")
    p.add_argument("--procs", type=int, help="flood processes (default: as the count needs)")
    p.add_argument("--source", help="flood source addresses, as flood --source")
    p.add_argument("--concurrency", type=int,
                   help="connects at once per flood process (default: 4,096 over all of them, "
                        "16 to 256 each)")
    p.add_argument("--publish-rate", type=float, metavar="R",
                   help="after the broadcasts, R messages/s each to one random held id "
                        "(flood.msggen), and what arrived: latency, loss")
    p.add_argument("--publish-for", type=float, default=60.0, metavar="S",
                   help="seconds of --publish-rate (default 60)")
    p.add_argument("--publish-batch", type=int, default=100, metavar="N",
                   help="messages per POST /send with --publish-rate (default 100; 1 sends "
                        "one request per message)")
    p.add_argument("--publish-concurrency", type=int, default=8, metavar="C",
                   help="msggen's senders with --publish-rate (default 8)")
    p.add_argument("--social", type=int, metavar="M",
                   help="with --publish-rate, the series' part 3: the held users follow each "
                        "other along a Barabási-Albert graph (each new user M links), loaded "
                        "into the server's Redis (or through the API), and msggen notifies "
                        "for random users: load time, Redis memory, fan-out, deliveries/s")
    p.add_argument("--publish-key-file", metavar="PATH",
                   help="publish (broadcasts, msggen) with the first key in this file "
                        "(default: $COMET_PUBLISH_KEY_FOR_CLIENT if set, else no key)")
    p.add_argument("--fanout-timeout", type=float, default=60.0,
                   help="seconds to wait for the broadcast to reach everyone (default 60)")
    p.add_argument("--netns", action="store_true",
                   help="run in a network namespace of its own whose TCP established hash has "
                        "a bucket per socket (root, Linux 6.1+, util-linux unshare; the host's "
                        "is sized at boot: 262,144 buckets for 24 GiB): flood/netns.py")
    p.add_argument("--json", help="write every figure and the time series here, and a "
                                  "one-page summary beside it (the same name, .md)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line while ramping and holding (stderr: redrawn in "
                        "place on a terminal, else a line every few seconds)")
    p.add_argument("--plot", default="bench-out/bench.png", help="PNG path (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return p


#: warm-up streams per worker (--warmup's default with --workers above 1)
WARMUP_PER_WORKER = 200


def _checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # the command line as parsed (main's argv, else sys.argv), for the JSON's "command"
    args.command = ["flood.bench", *(redisproc.redacted(a) if a == args.redis else a
                                     for a in argv)]
    if args.target and not args.server_pid:
        parser.error("--target needs --server-pid (bench measures that process's memory)")
    if args.connections < 1 or args.rate <= 0 or args.broadcasts < 1:
        parser.error("--connections, --rate and --broadcasts must be positive")
    if args.target and (args.server_args or args.modes):
        parser.error("--server-args and --modes need a server bench starts, not --target")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if (args.workers or 1) > 1 and not (args.redis_server or args.redis):
        parser.error(f"--workers {args.workers} needs --redis-server or --redis URL: each "
                     "worker has its own router, so only a broker that spans processes "
                     "delivers a message to the clients of every worker (the server "
                     "refuses to start without one)")
    if args.netns and (args.target or args.redis):
        parser.error("--netns runs everything in a namespace of its own: a --target server or "
                     "--redis outside it cannot be reached from there")
    if args.redis_server and args.redis:
        parser.error("--redis-server starts a Redis, --redis URL uses a running one: not both")
    if args.target and (args.workers or args.redis_server):
        parser.error("--workers and --redis-server need a server bench starts, not --target "
                     "(give a master's pid as --server-pid: its workers are found)")
    taken = {"--workers", "--redis"} & {a.split("=")[0] for a in
                                        shlex.split(args.server_args or "")}
    if taken:
        parser.error(f"{', '.join(sorted(taken))} in --server-args: give bench's own flag, "
                     "so that it measures (and starts) what the server uses")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be positive")
    try:
        publishkey.client_key(args.publish_key_file)
    except ValueError as exc:
        parser.error(str(exc))
    if args.publish_rate is not None and (args.publish_rate <= 0 or args.publish_for <= 0
                                          or args.publish_batch < 1
                                          or args.publish_concurrency < 1):
        parser.error("--publish-rate, --publish-for, --publish-batch and "
                     "--publish-concurrency must be positive")
    if args.social is not None and (args.social < 1 or not args.publish_rate):
        parser.error("--social needs a positive M and --publish-rate")
    if args.publish_rate and args.unread:
        parser.error("--publish-rate with --unread: nobody reads what is published")
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


def mode_args(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    """The arguments of one ``--modes`` run: its ``--hibernate`` flag and ``-MODE`` PNG name."""
    one = copy.copy(args)
    one.server_args = f"{args.server_args} --hibernate {mode}".strip()
    if args.plot:
        root, ext = os.path.splitext(args.plot)
        one.plot = f"{root}-{mode}{ext}"
    return one


def compare(args: argparse.Namespace) -> dict:
    """``--modes``: every mode in the order given, printed side by side; the JSON document.

    Each mode gets a fresh server (its own ``--server-args``) and its own PNG, so one
    mode's heap never flatters the other's.
    """
    runs = {mode: run_one(mode_args(args, mode)) for mode in args.modes}
    print("\n".join(benchtable.side_by_side(runs)))
    return {"command": args.command, "date": runs[args.modes[0]]["date"], "modes": runs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _checked(build_parser(), argv)
    if args.netns and not netns.inside():
        try:
            return netns.run_outside(argv, capacity.sockets(args.connections, loopback=True))
        except netns.NetnsError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    if netns.inside():
        args.netns_info = netns.enter()
    # SIGTERM (a timeout, a CI runner) ends a run as Ctrl-C does: through the cleanup
    # that stops the flood, the server and its workers, and the Redis bench started.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return bench(args)
    except KeyboardInterrupt:
        print("bench: interrupted; the processes it started are stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def refused(args: argparse.Namespace) -> bool:
    """The pre-check (:mod:`flood.precheck`): say why the run cannot fit, or what it takes.

    Before Redis, the server or the flood starts: a refused run starts nothing at all.
    """
    verdict = precheck.check(args, precheck.read_host())
    if verdict.refusals:
        print(f"bench: refused before starting anything: {args.connections:,} connections "
              "do not fit this host", *(f"  {r}" for r in verdict.refusals),
              "what the run would take in memory:", *verdict.plan, sep="\n", file=sys.stderr)
        return True
    args.precheck = verdict.summary()
    note = None if netns.inside() else netns.advice(capacity.sockets(args.connections, True))
    if note:
        print(f"bench: {note}", file=sys.stderr)
    print(f"bench: pre-check: {args.connections:,} connections fit: "
          f"{capacity.gib(args.precheck['with_margin_bytes'] / 1024)} of memory with the margin, "
          f"{capacity.gib(verdict.available_kib)} available; files, ports, backlog ok",
          file=sys.stderr)
    return False


def bench(args: argparse.Namespace) -> int:
    """One run or ``--modes``: the table, the JSON; exit status 0 when anything was held,
    2 when the pre-check refused the run."""
    if refused(args):
        return 2
    if not args.modes:
        result = run_one(args)
        print("\n".join(benchtable.table(result)))
        held = result["held"]
    else:
        result = compare(args)
        held = min(r["held"] for r in result["modes"].values())
    if args.json:
        write_json(args.json, result)
        print(f"json: {args.json}")
        page = os.path.splitext(args.json)[0] + ".md"
        with open(page, "w", encoding="utf-8") as fh:
            fh.write(benchtable.summary_page(result, args.json))
        print(f"summary: {page}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m flood URLFILE --wait MS``: the seed's floodtest, in one or several processes.

This module is the command line only: it reads the URL file, decides how many
processes, runs :class:`flood.worker.Flood` here or :class:`flood.procs.Children`,
and reports through :class:`flood.report.Reporter`. Exit status: 0 when at least one
stream was ever held, 1 when nothing ever connected, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

import gevent

from comet.hostlimits import (
    FLOOD_FD_MARGIN,
    connections_per_process,
    processes_needed,
    raise_open_files_limit,
)
from flood import progress, report, stats
from flood import transport as transports
from flood.procs import Children
from flood.sources import parse_sources, port_warning
from flood.urls import load_urls, parse_url
from flood.worker import Flood, Plan

#: Seconds children get to import and start before the shared schedule begins.
CHILD_START = 1.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flood",
        description="Open one comet connection per URL, count what arrives, print "
                    "'Stats: {Active,Closed,Chunks}' every --report seconds.")
    p.add_argument("urlfile", help="one URL a line ('-' = stdin); python -m flood.urls writes one")
    p.add_argument("--wait", type=float, default=100.0, metavar="MS",
                   help="milliseconds between new connections, 0 = as fast as possible "
                        "(default %(default)s, the seed's pace)")
    p.add_argument("--report", type=float, default=10.0, metavar="S",
                   help="seconds between Stats lines (default %(default)s)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds, print the summary, exit")
    p.add_argument("--json", metavar="FILE", help="write the time series and the summary here")
    p.add_argument("--procs", type=int, metavar="N",
                   help="flood processes (default: as many as the URL count needs under "
                        "the open-files limit)")
    p.add_argument("--source", metavar="ADDRS",
                   help="local addresses to bind, round robin: 127.0.0.2,127.0.0.3 or "
                        "127.0.0.2-127.0.0.9 or 127.0.0.0/28")
    p.add_argument("--transport", default="stream", choices=transports.CHOICES,
                   help="stream (/test/, chunked), sse (/events/), ws (/ws/) or poll "
                        "(/poll/): how to speak to the URLs (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=256, metavar="N",
                   help="connections being opened at once per process (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="connect + request + response head, seconds (default %(default)s)")
    p.add_argument("--closed-lines", type=int, default=20, metavar="N",
                   help="at most N 'Closed:' lines a second per process (default %(default)s)")
    p.add_argument("--progress-every", type=float, default=progress.EVERY, metavar="S",
                   help="while ramping, a progress line (held / target, rate, ETA) every S "
                        "seconds when stdout is not a terminal; on a terminal it is redrawn "
                        "in place (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Validate what argparse cannot; returns the source addresses."""
    for name in ("wait", "report", "concurrency", "timeout", "progress_every"):
        if getattr(args, name) < 0 or (name != "wait" and getattr(args, name) == 0):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.procs is not None and args.procs < 1:
        parser.error("--procs must be at least 1")
    try:
        return parse_sources(args.source) if args.source else []
    except ValueError as exc:
        parser.error(f"--source: {exc}")
    return []


class Ramp:
    """The ramp's progress line: shown until every URL was tried, then its last line."""

    def __init__(self, line: progress.ProgressLine, target: int, began: float) -> None:
        self.line = line
        self.target = target
        self.began = began  #: when the schedule began (time.time())

    def update(self, total: dict) -> None:
        if self.line.quiet:
            return
        elapsed = time.time() - self.began
        if total["attempted"] >= self.target and total["pending"] == 0:
            self.line.finish(progress.done_line(total, self.target, elapsed))
        else:
            self.line.show(progress.ramp_line(total, self.target, elapsed))


def _run_here(plan: Plan, urls: list[str], reporter: report.Reporter, every: float,
              ramp: Ramp) -> dict:
    flood = Flood(plan, urls, ramp.line.above)
    gevent.signal_handler(signal.SIGINT, flood.stop)
    gevent.signal_handler(signal.SIGTERM, flood.stop)
    next_report = time.time() + every

    def tick() -> None:
        nonlocal next_report
        ramp.update(flood.counters.snapshot_counts())
        if time.time() >= next_report:
            next_report += every
            reporter.tick(stats.sum_snapshots([flood.snapshot()]))

    final = flood.run(on_tick=tick, tick=min(every, progress.REDRAW))
    return stats.sum_snapshots([final])


def _run_children(plan: Plan, procs: int, reporter: report.Reporter, every: float,
                  ramp: Ramp) -> dict:
    children = Children(plan, procs, ramp.line.above)
    gevent.signal_handler(signal.SIGINT, children.stop)
    gevent.signal_handler(signal.SIGTERM, children.stop)
    children.start()
    next_tick = time.time() + CHILD_START + every
    while children.running():
        gevent.sleep(0.05)
        snapshots = children.snapshots()
        if len(snapshots) == procs:
            ramp.update(progress.light_sum(snapshots))
        if time.time() >= next_tick:
            next_tick += every
            reporter.tick(stats.sum_snapshots(children.snapshots()))
    for problem in children.wait():
        sys.stderr.write(f"flood: {problem}\n")
    return stats.sum_snapshots(children.snapshots())


def per_destination(urls: list[str]) -> dict[str, int]:
    """Connections per ``host:port``: what each source address needs ports for."""
    counts: dict[str, int] = {}
    for url in urls:
        target = parse_url(url)
        key = f"{target.host}:{target.port}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = _checked(parser, args)
    urls = load_urls(args.urlfile)
    if urls.bad:
        sys.stderr.write(f"flood: {urls.describe_skipped()}\n")
    if not urls.urls:
        sys.stderr.write(f"flood: no usable URL in {args.urlfile}\n")
        return 2
    for line in port_warning(per_destination(urls.urls), sources).splitlines():
        sys.stderr.write(f"flood: {line}\n")
    nofile = raise_open_files_limit()
    procs = args.procs or processes_needed(len(urls.urls), nofile, FLOOD_FD_MARGIN)
    if len(urls.urls) / procs > connections_per_process(nofile, FLOOD_FD_MARGIN):
        sys.stderr.write(f"flood: {len(urls.urls)} URLs over {procs} process(es) exceeds the "
                         f"open-files limit {nofile} per process; the excess will be "
                         f"'Too many open files'\n")
    plan = Plan(url_file=args.urlfile, wait_ms=args.wait, duration=args.duration,
                sources=sources, concurrency=args.concurrency, timeout=args.timeout,
                transport=args.transport, emit_every=min(args.report, 1.0),
                closed_lines=args.closed_lines)
    line = progress.ProgressLine(sys.stdout, sys.stdout.isatty(), args.progress_every,
                                 quiet=args.quiet)
    reporter = report.Reporter(line.above)
    tmp = None
    try:
        if procs == 1:
            ramp = Ramp(line, len(urls.urls), time.time())
            total = _run_here(plan, urls.urls, reporter, args.report, ramp)
        else:
            if args.urlfile == "-":
                fd, tmp = tempfile.mkstemp(prefix="flood-urls-", suffix=".txt")
                with os.fdopen(fd, "w") as fh:
                    fh.write("\n".join(urls.urls) + "\n")
                plan.url_file = tmp
            plan.start_at = time.time() + CHILD_START
            ramp = Ramp(line, len(urls.urls), plan.start_at)
            total = _run_children(plan, procs, reporter, args.report, ramp)
    finally:
        if tmp:
            os.unlink(tmp)
    summary = reporter.summary(total)
    summary.update(procs=procs, urls=len(urls.urls), skipped_bad=urls.bad,
                   skipped_blank=urls.blank, skipped_examples=urls.bad_examples)
    if args.json:
        report.write_json(args.json, {
            "command": ["flood", *(sys.argv[1:] if argv is None else argv)],
            "started": reporter.started, "report_every_s": args.report,
            "series": reporter.series, "summary": summary})
    if total["connected"] == 0:
        sys.stderr.write("flood: no connection was ever established\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

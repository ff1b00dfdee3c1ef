"""``python -m comet.tune``: this host's limits against what N connections need, and the fix.

This module owns the list of kernel and process settings that decide how many TCP
connections a host can hold (:data:`SYSCTLS`, one declaration per sysctl: its name, the
rule its value must satisfy, the value needed for a :class:`Target`, and why), reading
them, printing the verdict table, and ``--apply``, which writes the sysctls that are off
(root, after ``--yes`` or a prompt; never silently). ``conf/sysctl.conf`` holds the same
values for 1,000,000 connections. The RAM arithmetic lives in :mod:`comet.capacity`; the
host facts it shares with the server and the flood (open files, reading sysctls, the
sysctls the server checks at start) in :mod:`comet.hostlimits`, so the server never
imports this module. Tests point ``--proc-sys`` at a directory tree of their own instead
of ``/proc/sys``.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from comet import benchjson, capacity, hostlimits
from comet.hostlimits import ACCEPT_BURST, PROC_SYS, Check, ports, read_sysctl

DEFAULT_CONNECTIONS = 100_000


@dataclass(frozen=True)
class Target:
    """What the host must hold: N connections on a port, over some server processes."""

    connections: int
    port: int = 8000
    processes: int = 1
    #: The flood runs on this host too, so every connection has two sockets here.
    loopback: bool = False

    @property
    def per_process(self) -> int:
        return math.ceil(self.connections / self.processes)

    @property
    def sockets(self) -> int:
        return capacity.sockets(self.connections, self.loopback)

    def experiment(self, hard: int) -> capacity.Experiment:
        """Everything N connections run here: as many server processes as the open-files
        limit needs (a master and its workers, over a Redis, when more than one), and the
        flood's processes with ``--loopback``."""
        procs = max(self.processes, hostlimits.processes_needed(self.connections, hard))
        flood = hostlimits.processes_needed(self.connections, hard, hostlimits.FLOOD_FD_MARGIN)
        return capacity.Experiment(self.connections, procs + (procs > 1), redis=procs > 1,
                                   redis_started=procs > 1,
                                   flood_processes=flood if self.loopback else 0)


def _numbers(text: str) -> list[int | None]:
    return [None if word == "*" else int(word) for word in text.split()]


@dataclass(frozen=True)
class Rule:
    """How --apply moves a value towards the needed one; a value it would leave alone is ok."""

    sign: str
    merge: Callable[[str, str], str]

    def ok(self, current: str, needed: str) -> bool:
        return self.merge(current, needed) == current


def _elementwise(pick: Callable[[int, int], int]) -> Rule:
    """A rule on space-separated numbers; ``*`` in the needed value accepts anything there."""
    def merge(current: str, needed: str) -> str:
        pairs = zip(_numbers(current), _numbers(needed), strict=False)
        return " ".join(str(c if n is None else pick(c, n)) for c, n in pairs)
    return Rule(">=" if pick is max else "<=", merge)


def _widest(current: str, needed: str) -> str:
    (c_low, c_high), (n_low, n_high) = _numbers(current), _numbers(needed)
    return f"{min(c_low, n_low)} {max(c_high, n_high)}"


def _with_ports(current: str, needed: str) -> str:
    return current if ports(needed) <= ports(current) else ",".join(filter(None, (current, needed)))


AT_LEAST = _elementwise(max)
AT_MOST = _elementwise(min)
COVERS = Rule("covers", _widest)
INCLUDES = Rule("includes", _with_ports)


@dataclass(frozen=True)
class Sysctl:
    """One kernel setting: where it lives, what N connections need of it, and why."""

    name: str
    rule: Rule
    needed: Callable[[Target], str]
    why: str
    #: Absent on kernels without the module (nf_conntrack): then nothing to check.
    optional: bool = False


def _floor(floor: hostlimits.Floor) -> Sysctl:
    """A sysctl the server also checks at start: hostlimits declares its need and why."""
    return Sysctl(floor.name, AT_LEAST, lambda t: str(floor.needed(t.connections, t.sockets)),
                  floor.why, optional=floor.optional)


SYSCTLS: tuple[Sysctl, ...] = (
    _floor(hostlimits.FILE_MAX),
    Sysctl("fs.nr_open", AT_LEAST, lambda t: str(hostlimits.open_files_needed(t.per_process)),
           "ceiling for any process's RLIMIT_NOFILE: one process's connections + its own files"),
    Sysctl("net.ipv4.ip_local_port_range", COVERS, lambda t: "1024 65535",
           "ephemeral ports: one per outgoing connection to a server ip:port (the flood)"),
    Sysctl("net.ipv4.ip_local_reserved_ports", INCLUDES,
           lambda t: str(t.port) if t.port >= 1024 else "",
           "keeps the server's port out of the ephemeral range, or a client takes it and "
           "the server cannot bind"),
    _floor(hostlimits.SOMAXCONN),
    Sysctl("net.ipv4.tcp_max_syn_backlog", AT_LEAST, lambda t: str(ACCEPT_BURST),
           "half-open connections kept while the accept queue drains"),
    Sysctl("net.ipv4.tcp_syncookies", AT_LEAST, lambda t: "1",
           "a SYN flood is answered with cookies instead of dropping real clients"),
    Sysctl("net.core.netdev_max_backlog", AT_LEAST, lambda t: "2500",
           "per-CPU queue of received packets; loopback floods pass through it (the seed's value)"),
    _floor(hostlimits.CONNTRACK_MAX),
    Sysctl("net.ipv4.tcp_mem", AT_LEAST, lambda t: f"* {t.sockets} {2 * t.sockets}",
           "pages for all socket buffers: pressure at one per socket, max at two, so each "
           "connection can have a small message in flight"),
    Sysctl("net.ipv4.tcp_rmem", AT_MOST, lambda t: "4096 16384 *",
           "initial receive buffer: the server only receives requests; smaller pins less per "
           "unread upload, autotuning still grows it"),
    Sysctl("net.ipv4.tcp_wmem", AT_MOST, lambda t: "4096 16384 *",
           "initial send buffer: what a client that stops reading pins before the server "
           "drops it; larger means fewer drops, more RAM"),
)


def sysctl_rows(root: Path, target: Target, decls: Sequence[Sysctl] = SYSCTLS) -> list[Check]:
    rows = []
    for decl in decls:
        needed = decl.needed(target)
        current = read_sysctl(decl.name, root)
        shown = f"{decl.rule.sign} {needed or '-'}"
        if current is None:
            rows.append(Check(decl.name, "-", shown, "absent" if decl.optional else "MISSING",
                              "not on this kernel, or not readable here"))
        elif decl.rule.ok(current, needed):
            rows.append(Check(decl.name, current, shown, "ok"))
        else:
            rows.append(Check(decl.name, current, shown, "CHANGE", decl.why,
                              decl.rule.merge(current, needed)))
    return rows


def limit_rows(target: Target) -> list[Check]:
    """The open-files rows: the same checks the server logs at start, per process here."""
    return hostlimits.open_files_checks(target.per_process, target.connections)


def host_rows(target: Target, figures: capacity.Figures, available: int,
              hard: int) -> list[Check]:
    """RAM (KiB available) against the capacity plan, margin included, and processes
    against cores."""
    need = capacity.with_margin(capacity.memory_needed_kib(figures, target.experiment(hard)))
    rows = [Check("memory available", capacity.gib(available), f">= {capacity.gib(need)}",
                  "ok" if need <= available else "SHORT",
                  "spread the connections over more hosts, or lower memory per connection")]
    cores = len(os.sched_getaffinity(0))
    procs = max(target.processes, hostlimits.processes_needed(target.connections, hard))
    rows.append(Check("cores", str(cores), f"{procs} process(es)",
                      "ok" if procs <= cores else "note",
                      f"{procs} processes share {cores} cores: idle connections cost little CPU, "
                      "broadcasts are CPU bound"))
    return rows


def ehash_rows(target: Target, proc_sys: Path) -> list[Check]:
    """The TCP established hash against the sockets: not a sysctl, so a row of its own.

    Too few buckets does not refuse a connection; it slows every segment received
    (a million SSE streams here, the same code: a broadcast to all in 15.4 s with the
    boot's 262,144 buckets, 13.1 s with 2,097,152; docs/benchmarks.rst). Sized at
    boot, or per network namespace.
    """
    have = hostlimits.ehash_buckets(proc_sys)
    if have is None:
        return []
    need = hostlimits.ehash_needed(target.sockets)
    return [Check("TCP established hash", f"{have:,} buckets", f">= {target.sockets:,} sockets",
                  "ok" if have >= target.sockets else "note",
                  f"sized at boot: thash_entries={need} on the kernel command line; or a "
                  f"network namespace made after sysctl -w net.ipv4.tcp_child_ehash_entries={need} "
                  "(python -m flood.bench --netns does this for a run)")]


def print_table(rows: list[Check], out: TextIO) -> None:
    head = Check("setting", "current", "needed", "verdict")
    widths = [max(len(getattr(r, f)) for r in [head, *rows])
              for f in ("setting", "current", "needed")]
    for row in [head, *rows]:
        cells = (row.setting, row.current, row.needed)
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        print(line + "  " + row.verdict, file=out)
        if row.advice and row.verdict != "ok":
            print(f"    -> {row.advice}", file=out)


def apply(root: Path, rows: list[Check], *, yes: bool, answers: TextIO, out: TextIO) -> int:
    """Write the sysctls that are off, after consent; say what changed and what could not."""
    changes = [r for r in rows if r.new is not None]
    for row in rows:
        if row.new is None and row.verdict in ("CHANGE", "CANNOT"):
            print(f"not changed by --apply: {row.setting} ({row.advice})", file=out)
    if not changes:
        print("--apply: no sysctl to change", file=out)
        return 0
    if root == PROC_SYS and os.geteuid() != 0:
        print("--apply refused: writing /proc/sys needs root "
              "(sudo python -m comet.tune --apply ...); nothing written", file=out)
        return 2
    print(f"--apply will write {len(changes)} setting(s) under {root}:", file=out)
    for row in changes:
        print(f"  {row.setting}: {row.current} -> {row.new}", file=out)
    if not yes:
        print("Write them? [y/N] ", end="", file=out, flush=True)
        if answers.readline().strip().lower() not in ("y", "yes"):
            print("\nnot confirmed: nothing written", file=out)
            return 2
    failed = 0
    for row in changes:
        try:
            hostlimits.sysctl_path(row.setting, root).write_text(row.new + "\n")
        except OSError as exc:
            failed += 1
            print(f"could not change {row.setting}: {write_refusal(exc, row)}", file=out)
        else:
            print(f"changed {row.setting}: {row.current} -> {row.new}", file=out)
    print("These last until reboot; to keep them: cp conf/sysctl.conf "
          "/etc/sysctl.d/60-comet.conf && sysctl --system", file=out)
    return 1 if failed else 0


def write_refusal(exc: OSError, row: Check) -> str:
    """Why the kernel refused a write, in words that say what to do instead."""
    elsewhere = f"set it on the host or with `docker run --sysctl {row.setting}={row.new}`"
    if exc.errno == errno.EROFS:
        return f"/proc/sys is read-only here (a container): {elsewhere}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"not permitted (needs root in the host's namespace): {elsewhere}"
    if exc.errno == errno.EINVAL:
        return f"the kernel rejected the value {row.new!r}"
    return exc.strerror or str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m comet.tune",
        description="Check this host's kernel and process limits against what N connections "
                    "need; print a table and a capacity plan. Exit status: 0 all ok, 1 something "
                    "is off, 2 refused or bad input.")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
                        help="connections to plan for (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="the server's port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, metavar="P",
                        help="server processes sharing the connections (default 1)")
    parser.add_argument("--loopback", action="store_true",
                        help="the flood runs on this host too: both ends' sockets count")
    parser.add_argument("--from", dest="bench", metavar="BENCH_JSON",
                        help="per-connection figures from `python -m flood.bench --json` output")
    parser.add_argument("--apply", action="store_true",
                        help="write the sysctls that are off (root; asks unless --yes)")
    parser.add_argument("--yes", action="store_true", help="with --apply: do not ask")
    parser.add_argument("--proc-sys", type=Path, default=PROC_SYS, metavar="DIR",
                        help="read and write sysctls under DIR instead of /proc/sys (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.connections <= 0 or args.workers <= 0 or not 0 <= args.port <= 65535:
        print("comet.tune: --connections and --workers must be positive, --port 0-65535",
              file=sys.stderr)
        return 2
    try:
        figures = benchjson.load_figures(args.bench) if args.bench else capacity.DEFAULT_FIGURES
    except ValueError as exc:
        print(f"comet.tune: --from: {exc}", file=sys.stderr)
        return 2
    target = Target(args.connections, args.port, args.workers, args.loopback)
    available = psutil.virtual_memory().available // 1024
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    rows = (sysctl_rows(args.proc_sys, target) + limit_rows(target)
            + host_rows(target, figures, available, hard) + ehash_rows(target, args.proc_sys))
    print(f"comet.tune: {target.connections:,} connections on port {target.port}, "
          f"{target.processes} process(es){', flood on this host' if target.loopback else ''}; "
          f"sysctls under {args.proc_sys}")
    print_table(rows, sys.stdout)
    wmem = (read_sysctl("net.ipv4.tcp_wmem", args.proc_sys) or "4096 16384 4194304").split()
    print("", *capacity.plan_lines(
        figures, target.experiment(hard),
        port_range=hostlimits.ephemeral_ports(args.proc_sys) or hostlimits.LINUX_EPHEMERAL_PORTS,
        nofile_hard=hard, wmem_initial=int(wmem[1]), available_kib=available), sep="\n")
    if args.apply:
        print()
        return apply(args.proc_sys, rows, yes=args.yes, answers=sys.stdin, out=sys.stdout)
    return 0 if all(r.verdict in ("ok", "absent", "note") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m comet.tune``: this host's limits against what N connections need, and the fix.

This module owns the list of kernel and process settings that decide how many TCP
connections a host can hold (:data:`SYSCTLS`, one declaration per sysctl: its name, the
rule its value must satisfy, the value needed for a :class:`Target`, and why), reading
them, printing the verdict table, and ``--apply``, which writes the sysctls that are off
(root, after ``--yes`` or a prompt; never silently). ``conf/sysctl.conf`` holds the same
values for 1,000,000 connections. The RAM arithmetic lives in :mod:`comet.capacity`.

The server calls :func:`startup_problems` at start so that a limit too low for its own
``--max-connections`` and ``--port`` is logged before clients find it. Tests point
``--proc-sys`` at a directory tree of their own instead of ``/proc/sys``.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import psutil

from comet import capacity
from comet.capacity import FD_MARGIN

PROC_SYS = Path("/proc/sys")
DEFAULT_CONNECTIONS = 100_000
#: Accept queue: two seconds of arrivals at 4,000 new connections/s (issue 6's accept target).
ACCEPT_BURST = 8192
#: System-wide files beyond the sockets: everything else the host runs.
HOST_FILES = 65536
#: Bit of CAP_SYS_RESOURCE in /proc/self/status CapEff: needed to raise a hard rlimit.
CAP_SYS_RESOURCE = 24


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


def _numbers(text: str) -> list[int | None]:
    return [None if word == "*" else int(word) for word in text.split()]


def ports(text: str) -> set[int]:
    """Ports in a kernel port list such as ``8000,9000-9010`` (ip_local_reserved_ports)."""
    found: set[int] = set()
    for part in filter(None, text.replace(" ", "").split(",")):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


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
        pairs = zip(_numbers(current), _numbers(needed))
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
    #: Checked by :func:`startup_problems` against the server's own --max-connections.
    at_start: bool = False

    @property
    def path(self) -> str:
        return self.name.replace(".", "/")


SYSCTLS: tuple[Sysctl, ...] = (
    Sysctl("fs.file-max", AT_LEAST, lambda t: str(t.sockets + HOST_FILES),
           "every socket is a file, system-wide; both ends count when the flood runs here",
           at_start=True),
    Sysctl("fs.nr_open", AT_LEAST, lambda t: str(t.per_process + FD_MARGIN),
           "ceiling for any process's RLIMIT_NOFILE: one process's connections + its own files"),
    Sysctl("net.ipv4.ip_local_port_range", COVERS, lambda t: "1024 65535",
           "ephemeral ports: one per outgoing connection to a server ip:port (the flood)"),
    Sysctl("net.ipv4.ip_local_reserved_ports", INCLUDES,
           lambda t: str(t.port) if t.port >= 1024 else "",
           "keeps the server's port out of the ephemeral range, or a client takes it and "
           "the server cannot bind"),
    Sysctl("net.core.somaxconn", AT_LEAST, lambda t: str(ACCEPT_BURST),
           "caps the listen backlog: a burst of new connections beyond it is dropped",
           at_start=True),
    Sysctl("net.ipv4.tcp_max_syn_backlog", AT_LEAST, lambda t: str(ACCEPT_BURST),
           "half-open connections kept while the accept queue drains"),
    Sysctl("net.ipv4.tcp_syncookies", AT_LEAST, lambda t: "1",
           "a SYN flood is answered with cookies instead of dropping real clients"),
    Sysctl("net.core.netdev_max_backlog", AT_LEAST, lambda t: "2500",
           "per-CPU queue of received packets; loopback floods pass through it (the seed's value)"),
    Sysctl("net.netfilter.nf_conntrack_max", AT_LEAST, lambda t: str(t.connections + HOST_FILES),
           "one conntrack entry per connection while netfilter tracks; full table drops SYNs",
           optional=True, at_start=True),
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


def read_sysctl(root: Path, name: str) -> str | None:
    """The value as the kernel shows it, whitespace collapsed; None when absent or unreadable."""
    try:
        return " ".join((root / name.replace(".", "/")).read_text().split())
    except OSError:
        return None


def ephemeral_ports(root: Path) -> tuple[int, int] | None:
    """The first and last port the kernel picks source ports from."""
    span = read_sysctl(root, "net.ipv4.ip_local_port_range")
    return (int(span.split()[0]), int(span.split()[1])) if span else None


@dataclass
class Row:
    """One line of the table; ``new`` is what --apply would write (sysctls only)."""

    setting: str
    current: str
    needed: str
    verdict: str
    advice: str = ""
    new: str | None = None


def sysctl_rows(root: Path, target: Target, decls: Sequence[Sysctl] = SYSCTLS) -> list[Row]:
    rows = []
    for decl in decls:
        needed = decl.needed(target)
        current = read_sysctl(root, decl.name)
        shown = f"{decl.rule.sign} {needed or '-'}"
        if current is None:
            rows.append(Row(decl.name, "-", shown, "absent" if decl.optional else "MISSING",
                            "not on this kernel, or not readable here"))
        elif decl.rule.ok(current, needed):
            rows.append(Row(decl.name, current, shown, "ok"))
        else:
            rows.append(Row(decl.name, current, shown, "CHANGE", decl.why,
                            decl.rule.merge(current, needed)))
    return rows


def can_raise_hard_limits() -> bool:
    """Only CAP_SYS_RESOURCE lifts a hard rlimit; containers usually drop it, even for root."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


def limit_rows(target: Target) -> list[Row]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = target.per_process + FD_MARGIN
    shown = f">= {need}"
    rows = [Row("RLIMIT_NOFILE soft", str(soft), shown, "ok" if soft >= need else "CHANGE",
                f"per-process open files: ulimit -n {min(need, hard)}, LimitNOFILE in "
                "conf/comet.service, or conf/limits.conf")]
    if hard >= need:
        rows.append(Row("RLIMIT_NOFILE hard", str(hard), shown, "ok"))
        return rows
    procs = capacity.processes_needed(target.connections, hard)
    instead = (f"instead run {procs} processes of <= {hard - FD_MARGIN:,} connections each "
               f"(--workers {procs}, with --redis); check with --workers {procs}")
    if can_raise_hard_limits():
        rows.append(Row("RLIMIT_NOFILE hard", str(hard), shown, "CHANGE",
                        "raise in conf/limits.conf or LimitNOFILE (<= fs.nr_open); or " + instead))
    else:
        rows.append(Row("RLIMIT_NOFILE hard", str(hard), shown, "CANNOT",
                        f"the hard limit {hard:,} cannot be raised from inside this host or "
                        "container (no CAP_SYS_RESOURCE: whoever starts it sets it); " + instead))
    return rows


def host_rows(target: Target, figures: capacity.Figures, available: int, hard: int) -> list[Row]:
    """RAM (KiB available) against the capacity plan, and processes against cores."""
    need = capacity.memory_needed_kib(figures, target.connections, target.loopback)
    rows = [Row("memory available", capacity.gib(available), f">= {capacity.gib(need)}",
                "ok" if need <= available else "SHORT",
                "spread the connections over more hosts, or lower memory per connection")]
    cores = len(os.sched_getaffinity(0))
    procs = max(target.processes, capacity.processes_needed(target.connections, hard))
    rows.append(Row("cores", str(cores), f"{procs} process(es)", "ok" if procs <= cores else "note",
                    f"{procs} processes share {cores} cores: idle connections cost little CPU, "
                    "broadcasts are CPU bound"))
    return rows


def print_table(rows: list[Row], out: TextIO) -> None:
    head = Row("setting", "current", "needed", "verdict")
    widths = [max(len(getattr(r, f)) for r in [head, *rows])
              for f in ("setting", "current", "needed")]
    for row in [head, *rows]:
        cells = (row.setting, row.current, row.needed)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + row.verdict, file=out)
        if row.advice and row.verdict != "ok":
            print(f"    -> {row.advice}", file=out)


def apply(root: Path, rows: list[Row], *, yes: bool, answers: TextIO, out: TextIO) -> int:
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
            (root / row.setting.replace(".", "/")).write_text(row.new + "\n")
        except OSError as exc:
            failed += 1
            print(f"could not change {row.setting}: {write_refusal(exc, row)}", file=out)
        else:
            print(f"changed {row.setting}: {row.current} -> {row.new}", file=out)
    print("These last until reboot; to keep them: cp conf/sysctl.conf "
          "/etc/sysctl.d/60-comet.conf && sysctl --system", file=out)
    return 1 if failed else 0


def write_refusal(exc: OSError, row: Row) -> str:
    """Why the kernel refused a write, in words that say what to do instead."""
    elsewhere = f"set it on the host or with `docker run --sysctl {row.setting}={row.new}`"
    if exc.errno == errno.EROFS:
        return f"/proc/sys is read-only here (a container): {elsewhere}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"not permitted (needs root in the host's namespace): {elsewhere}"
    if exc.errno == errno.EINVAL:
        return f"the kernel rejected the value {row.new!r}"
    return exc.strerror or str(exc)


def startup_problems(max_connections: int, port: int, *,
                     proc_sys: str | Path = PROC_SYS) -> list[str]:
    """Tuning problems that will bite this server's own settings, for its start-up log.

    Only what matters for ``--max-connections`` and ``--port`` on this host: open-files
    limits, file and conntrack tables, the listen backlog, and the port inside the ephemeral
    range. Reads only; an unreadable value is skipped rather than failing the start.
    """
    root, target = Path(proc_sys), Target(max_connections, port)
    rows = sysctl_rows(root, target, [d for d in SYSCTLS if d.at_start]) + limit_rows(target)
    problems = [f"{r.setting} = {r.current}, needs {r.needed} for --max-connections "
                f"{max_connections}: {r.advice}" + (f" (sysctl -w {r.setting}='{r.new}')"
                                                    if r.new else "")
                for r in rows if r.verdict in ("CHANGE", "CANNOT")]
    span = ephemeral_ports(root)
    reserved = read_sysctl(root, "net.ipv4.ip_local_reserved_ports") or ""
    if port and span and span[0] <= port <= span[1] and port not in ports(reserved):
        problems.append(
            f"port {port} is inside net.ipv4.ip_local_port_range {span[0]}-{span[1]} and not in "
            "net.ipv4.ip_local_reserved_ports: an outgoing connection may take it as its "
            "source port and a restart then cannot bind "
            f"(sysctl -w net.ipv4.ip_local_reserved_ports={port})")
    return problems


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
        figures = capacity.load_figures(args.bench) if args.bench else capacity.DEFAULT_FIGURES
    except ValueError as exc:
        print(f"comet.tune: --from: {exc}", file=sys.stderr)
        return 2
    target = Target(args.connections, args.port, args.workers, args.loopback)
    available = psutil.virtual_memory().available // 1024
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    rows = (sysctl_rows(args.proc_sys, target) + limit_rows(target)
            + host_rows(target, figures, available, hard))
    print(f"comet.tune: {target.connections:,} connections on port {target.port}, "
          f"{target.processes} process(es){', flood on this host' if target.loopback else ''}; "
          f"sysctls under {args.proc_sys}")
    print_table(rows, sys.stdout)
    wmem = (read_sysctl(args.proc_sys, "net.ipv4.tcp_wmem") or "4096 16384 4194304").split()
    print("", *capacity.plan_lines(
        figures, target.connections, loopback=target.loopback,
        port_range=ephemeral_ports(args.proc_sys) or (32768, 60999),
        nofile_hard=hard, wmem_initial=int(wmem[1]), available_kib=available), sep="\n")
    if args.apply:
        print()
        return apply(args.proc_sys, rows, yes=args.yes, answers=sys.stdin, out=sys.stdout)
    return 0 if all(r.verdict in ("ok", "absent", "note") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""bench's check of this host before it starts anything: does the run fit, and if not, why.

``python -m flood.bench`` asks :func:`check` before it starts Redis, the server or the
flood. Each check sets one limit of this host against what the run's N connections
need and, when the limit falls short, words a refusal: the limit, its value, what is
needed and the fix, in bench's own flags. Memory is the one a run must never get wrong
(past it the kernel's OOM killer picks a victim, perhaps someone else's process), so it
has no override; nor has any other, since each means a run that cannot hold its N.

The needs are comet's arithmetic, written once: :mod:`comet.capacity` for memory
(the whole experiment: server, Redis, flood, kernel, each process's own) and socket
buffer pages, :mod:`comet.hostlimits` for files, processes, source ports and the
listen backlog. This module only maps bench's flags onto an experiment, reads the host
into a :class:`Host`, compares, and words. With ``--target`` the server already runs
(its memory and backlog are its own business): only what the flood needs is checked.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import resource
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from comet import capacity, hostlimits
from comet.capacity import Experiment, Figures, gib
from comet.hostlimits import FLOOD_FD_MARGIN, PROC_SYS
from flood.sources import parse_sources


@dataclass(frozen=True)
class Host:
    """This host's limits, read once: None where the kernel does not say."""

    available_kib: int | None      #: MemAvailable
    file_max: int | None           #: fs.file-max
    files_in_use: int | None       #: fs.file-nr, first field
    nofile_hard: int               #: RLIMIT_NOFILE hard: what every process bench starts gets
    port_range: tuple[int, int]    #: net.ipv4.ip_local_port_range
    somaxconn: int | None          #: net.core.somaxconn
    tcp_mem: list[int] | None      #: net.ipv4.tcp_mem, pages: pressure starts, ..., at most


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def read_host(proc_sys: str | Path = PROC_SYS) -> Host:
    """The limits that decide whether a run fits, as the kernel has them now."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    tcp_mem = (hostlimits.read_sysctl("net.ipv4.tcp_mem", proc_sys) or "").split()
    return Host(
        available_kib=hostlimits.memory_available_kib(),
        file_max=_number(hostlimits.read_sysctl("fs.file-max", proc_sys)),
        files_in_use=hostlimits.files_in_use(proc_sys),
        # an unlimited hard limit: the soft one is raised to 2**20 (raise_open_files_limit)
        nofile_hard=1 << 20 if hard == resource.RLIM_INFINITY else hard,
        port_range=hostlimits.ephemeral_ports(proc_sys) or hostlimits.LINUX_EPHEMERAL_PORTS,
        somaxconn=_number(hostlimits.read_sysctl("net.core.somaxconn", proc_sys)),
        tcp_mem=[int(w) for w in tcp_mem] if len(tcp_mem) == 3 and all(
            w.isdigit() for w in tcp_mem) else None)


@dataclass(frozen=True)
class Verdict:
    """What the check found: refusals (empty: the run fits) and the memory it predicts."""

    refusals: list[str]
    #: The memory part of the capacity plan: each term, its arithmetic, its origin.
    plan: list[str]
    terms: list[capacity.Term]
    available_kib: int | None

    def summary(self) -> dict:
        """The prediction for the JSON, in bytes, to set beside what the run measures."""
        kib = sum(t.kib for t in self.terms)
        return {"predicted_bytes": round(kib * 1024),
                "predicted_growth_bytes": round(sum(t.kib for t in self.terms if t.grows) * 1024),
                "with_margin_bytes": capacity.with_margin(kib) * 1024,
                "available_bytes": None if self.available_kib is None
                else self.available_kib * 1024,
                "terms": {t.name: round(t.kib * 1024) for t in self.terms}}


def flood_processes(args: argparse.Namespace, connections: int, hard: int) -> int:
    """The flood processes bench starts: ``--procs``, else as many as the open-files limit needs."""
    return args.procs or hostlimits.processes_needed(connections, hard, FLOOD_FD_MARGIN)


def experiment(args: argparse.Namespace, connections: int, hard: int) -> Experiment:
    """What bench runs on this host for ``connections``: its server (a master and
    ``--workers`` workers, or one process) and Redis unless ``--target``, and the flood."""
    here = not args.target
    workers = args.workers or 1
    return Experiment(
        connections,
        server_processes=workers + (workers > 1) if here else 0,
        redis=here and bool(args.redis_server or args.redis),
        redis_started=here and bool(args.redis_server),
        flood_processes=flood_processes(args, connections, hard),
        transport=capacity.BENCH_TRANSPORTS.get(args.transport),
        unread_bytes=args.unread_bytes if args.unread else 0)


def about(n: int) -> int:
    """``n`` rounded down to two significant figures, for "lower --connections to ~N"."""
    scale = 10 ** max(len(str(n)) - 2, 0)
    return n // scale * scale


def memory(args: argparse.Namespace, host: Host, figures: Figures) -> str | None:
    n, hard = args.connections, host.nofile_hard
    if host.available_kib is None:
        return ("memory: MemAvailable is not in /proc/meminfo, so whether the run fits "
                "cannot be told: bench does not start what might meet the OOM killer")
    total = capacity.memory_needed_kib(figures, experiment(args, n, hard))
    need = capacity.with_margin(total)
    if need <= host.available_kib:
        return None
    most = capacity.most_connections(figures, lambda k: experiment(args, k, hard),
                                     host.available_kib, n)
    fix = (f"lower --connections to ~{about(most):,}" + (" or --unread-bytes" if args.unread
                                                          else "") + " or free memory") \
        if most else "free memory (not one connection fits beside the processes' own)"
    return (f"memory: {n:,} connections need {gib(need)} ({gib(total)} by the capacity model "
            f"and {capacity.MEMORY_MARGIN:.0%} more), {gib(host.available_kib)} available "
            f"(MemAvailable): {fix}")


def files(args: argparse.Namespace, host: Host) -> str | None:
    if host.file_max is None or host.files_in_use is None:
        return None
    exp = experiment(args, args.connections, host.nofile_hard)
    need = hostlimits.files_needed(exp.sockets, exp.server_processes, exp.flood_processes)
    free = host.file_max - host.files_in_use
    if need <= free:
        return None
    ends = exp.sockets // args.connections
    most = max((free - (need - exp.sockets)) // ends, 0)
    return (f"files: {args.connections:,} connections open {need:,} files here ({exp.sockets:,} "
            f"sockets and what each process keeps for itself), fs.file-max {host.file_max:,} "
            f"less {host.files_in_use:,} in use (fs.file-nr) leaves {free:,}: sysctl -w "
            f"fs.file-max={host.files_in_use + need + hostlimits.HOST_FILES} or lower "
            f"--connections to ~{about(most):,}")


def open_files(args: argparse.Namespace, host: Host) -> list[str]:
    """Each server process and each flood process must hold its share under the hard limit
    (bench raises the soft limit to it; only the hard one is final)."""
    n, hard, refusals = args.connections, host.nofile_hard, []
    workers = args.workers or 1
    need = hostlimits.open_files_needed(math.ceil(n / workers))
    if not args.target and need > hard:
        procs = hostlimits.processes_needed(n, hard)
        redis = "" if args.redis_server or args.redis else " --redis-server"
        refusals.append(
            f"open files: {n:,} connections over {workers} server process(es) need {need:,} "
            f"files in each, RLIMIT_NOFILE hard is {hard:,}: --workers {procs}{redis} (at "
            f"most {hostlimits.connections_per_process(hard):,} connections each)")
    procs = flood_processes(args, n, hard)
    need = hostlimits.open_files_needed(math.ceil(n / procs), FLOOD_FD_MARGIN)
    if need > hard:
        refusals.append(
            f"open files: {n:,} connections over --procs {procs} flood processes need "
            f"{need:,} files in each, RLIMIT_NOFILE hard is {hard:,}: --procs "
            f"{hostlimits.processes_needed(n, hard, FLOOD_FD_MARGIN)}, or leave --procs out "
            "(bench then starts as many as the limit needs)")
    return refusals


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or "127.0.0.1"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_range(start: str, count: int) -> str | None:
    """``--source`` for ``count`` addresses from ``start``; None past 127.255.255.254."""
    first = ipaddress.IPv4Address(start)
    if int(first) + count - 1 >= int(ipaddress.IPv4Address("127.255.255.255")):
        return None
    return f"{first}-{first + count - 1}"


def ports(args: argparse.Namespace, host: Host) -> str | None:
    """One source address opens one connection per ephemeral port to the server's one
    address and port; more connections need more source addresses."""
    sources = parse_sources(args.source) if args.source else []
    given = len(sources) or 1
    span = host.port_range
    need = hostlimits.source_addresses_needed(args.connections, span)
    if need <= given:
        return None
    has = f"--source gives {given}" if sources else "without --source there is 1"
    fast = math.ceil(args.connections / max(hostlimits.ports_per_source(span) // 2, 1))
    start = sources[0] if sources else "127.0.0.2"
    least, quick = _loopback_range(start, need), _loopback_range(start, fast)
    if not _loopback(args.target or "http://127.0.0.1") or not _loopback(f"http://{start}"):
        fix = f"--source with {need:,} addresses of this host's interfaces"
    elif least is None:
        fix = f"more than 127.0.0.0/8 holds from {start}: run the flood on more hosts"
    else:
        fix = f"--source {least}" + (f", or {quick} to keep each address under half the "
                                     "range, where connect() stays fast" if quick else "")
    return (f"ports: {args.connections:,} connections need {need:,} source addresses "
            f"({hostlimits.ports_per_source(span):,} ephemeral ports each: "
            f"net.ipv4.ip_local_port_range {span[0]} {span[1]}), {has}: {fix}")


def backlog(args: argparse.Namespace, host: Host) -> str | None:
    need = hostlimits.backlog_needed(args.rate, args.connections)
    if args.target or host.somaxconn is None or host.somaxconn >= need:
        return None
    return (f"listen backlog: --rate {args.rate:g} brings {need:,} connections in "
            f"{hostlimits.ACCEPT_SECONDS} s, which a busy server must hold in its backlog; "
            f"net.core.somaxconn {host.somaxconn:,} caps it: sysctl -w net.core.somaxconn="
            f"{need} or lower --rate to {host.somaxconn / hostlimits.ACCEPT_SECONDS:g}")


def socket_buffers(args: argparse.Namespace, host: Host) -> str | None:
    if args.target or host.tcp_mem is None:
        return None
    unread = args.unread_bytes if args.unread else 0
    need = capacity.socket_buffer_pages(args.connections, unread,
                                        hostlimits.backlog_needed(args.rate, args.connections))
    low, pressure, most = host.tcp_mem
    if need <= most:
        return None
    what = (f"{args.connections:,} connections with --unread-bytes {unread:,} each" if unread
            else f"the requests waiting in a backlog at --rate {args.rate:g}")
    return (f"socket buffers: {what} need {need:,} pages, net.ipv4.tcp_mem allows {most:,} at "
            f"most: sysctl -w net.ipv4.tcp_mem='{low} {min(pressure, need)} {need}' or lower "
            + ("--connections or --unread-bytes" if unread else "--rate"))


def check(args: argparse.Namespace, host: Host,
          figures: Figures = capacity.DEFAULT_FIGURES) -> Verdict:
    """Every limit against what the run needs; the memory plan whether it fits or not."""
    refusals = [memory(args, host, figures), files(args, host), *open_files(args, host),
                ports(args, host), backlog(args, host), socket_buffers(args, host)]
    exp = experiment(args, args.connections, host.nofile_hard)
    return Verdict([r for r in refusals if r],
                   capacity.memory_lines(figures, exp, host.available_kib or 0),
                   capacity.memory_terms(figures, exp), host.available_kib)

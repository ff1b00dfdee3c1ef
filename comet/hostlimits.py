"""What this host allows a process and its connections: open files, sysctls, ephemeral ports.

This module owns the host knowledge that the server, the operations tools
(:mod:`comet.tune`, :mod:`comet.capacity`) and the flood share, each fact written once:
how many descriptors each kind of process keeps for itself, raising ``RLIMIT_NOFILE``,
how many processes N connections take, the files and listen backlog they need, reading
sysctls (the ephemeral port range, the files in use among them) and the memory
available, the sysctls the server checks at start, and :func:`startup_problems`, the
lines the server logs when a limit falls short of its own ``--max-connections`` and
``--port``.

It imports only the standard library, so that flood can use it and still never import
comet's router, app, server, hub or broker, and so that the server needs neither
``comet.tune`` nor ``comet.capacity``. It only reads; writing sysctls is ``comet.tune``'s.
Tests point ``proc_sys`` at a tree of their own instead of ``/proc/sys``.
"""

from __future__ import annotations

import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("comet.hostlimits")

PROC_SYS = Path("/proc/sys")
MEMINFO = Path("/proc/meminfo")

#: Descriptors a server process keeps beside the connections it holds: the listener, epoll,
#: stdio and logs, and the short requests in flight at the same moment (``POST /send``,
#: ``/stats``, ``/health``), each a socket that ``--max-connections`` does not count. A
#: thousand lets a burst of publishers in without "Too many open files"; one process so
#: holds 19,000 connections under a 20,000-file limit (docs/tuning.rst).
SERVER_FD_MARGIN = 1000

#: Descriptors a flood process keeps beside its connections: stdio, epoll, the pipe its
#: parent reads, the URL file, the resolver. Unlike a server it answers no requests, so
#: nothing else grows with load: a few dozen suffice, and 64 leaves room.
FLOOD_FD_MARGIN = 64

#: System-wide files beyond the sockets: everything else the host runs.
HOST_FILES = 65536
#: Seconds of arrivals a listen backlog must hold while the server is busy (a broadcast).
ACCEPT_SECONDS = 2
#: Accept queue: two seconds of arrivals at 4,000 new connections/s (issue 6's accept target).
ACCEPT_BURST = 8192
#: Linux's default ``net.ipv4.ip_local_port_range``, assumed when it cannot be read.
LINUX_EPHEMERAL_PORTS = (32768, 60999)
#: Bit of CAP_SYS_RESOURCE in /proc/self/status CapEff: needed to raise a hard rlimit.
CAP_SYS_RESOURCE = 24


# -- open files -------------------------------------------------------------------------

def raise_open_files_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit in force.

    Every connection is a file, and the soft limit (often 1,024) is what fails
    ``accept()`` or ``connect()`` with "Too many open files"; any process may raise it
    as far as the hard limit. A refusal is logged, not raised: the process goes on
    with what it has, and the caller sizes itself from the value returned.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s",
                        soft, target, exc)
    return soft


def connections_per_process(nofile: int, margin: int = SERVER_FD_MARGIN) -> int:
    """Connections one process can hold under ``nofile`` open files, its own kept back."""
    return max(nofile - margin, 1)


def processes_needed(connections: int, nofile: int, margin: int = SERVER_FD_MARGIN) -> int:
    """Processes ``connections`` take when each may open ``nofile`` files (at least one)."""
    return max(math.ceil(connections / connections_per_process(nofile, margin)), 1)


def open_files_needed(connections: int, margin: int = SERVER_FD_MARGIN) -> int:
    """The open-files limit a process holding ``connections`` needs, its own files included."""
    return connections + margin


def files_needed(sockets: int, server_processes: int, flood_processes: int) -> int:
    """System-wide files an experiment opens: its sockets and each process's own margin."""
    return sockets + server_processes * SERVER_FD_MARGIN + flood_processes * FLOOD_FD_MARGIN


def can_raise_hard_limits() -> bool:
    """Only CAP_SYS_RESOURCE lifts a hard rlimit; containers usually drop it, even for root."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


# -- sysctls and ephemeral ports ---------------------------------------------------------

def sysctl_path(name: str, proc_sys: str | Path = PROC_SYS) -> Path:
    """Where ``name`` (``net.core.somaxconn``) lives under ``proc_sys``."""
    return Path(proc_sys) / name.replace(".", "/")


def read_sysctl(name: str, proc_sys: str | Path = PROC_SYS) -> str | None:
    """The value as the kernel shows it, whitespace collapsed; None when absent or unreadable."""
    try:
        return " ".join(sysctl_path(name, proc_sys).read_text().split())
    except OSError:
        return None


def files_in_use(proc_sys: str | Path = PROC_SYS) -> int | None:
    """Files open system-wide now: the first field of ``fs.file-nr``; None when unreadable."""
    words = (read_sysctl("fs.file-nr", proc_sys) or "").split()
    return int(words[0]) if words and words[0].isdigit() else None


def kib_fields(path: str | Path, *names: str) -> dict[str, int]:
    """``Name:   N kB`` lines of a /proc file (meminfo, smaps_rollup) in KiB, by name;
    raises OSError when it cannot be read."""
    found = {}
    with open(path) as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in names:
                found[name] = int(rest.split()[0])
    return found


def memory_available_kib(meminfo: str | Path = MEMINFO) -> int | None:
    """``MemAvailable`` (KiB): what can be allocated without swapping, page cache included;
    None when the kernel does not say (before Linux 3.14)."""
    try:
        return kib_fields(meminfo, "MemAvailable").get("MemAvailable")
    except OSError:
        return None


#: Most buckets ``net.ipv4.tcp_child_ehash_entries`` takes (Linux's cap, 16 Mi).
EHASH_MAX = 16 * 1024 * 1024


def ehash_buckets(proc_sys: str | Path = PROC_SYS) -> int | None:
    """Buckets of this network namespace's TCP established hash; None when the kernel
    does not say (before Linux 6.1). Negative in the file means shared with the host's."""
    text = read_sysctl("net.ipv4.tcp_ehash_entries", proc_sys)
    try:
        return abs(int(text)) if text else None
    except ValueError:
        return None


def ehash_needed(sockets: int) -> int:
    """Buckets for ``sockets`` established sockets at one a bucket: a power of two, as
    the kernel rounds, at most :data:`EHASH_MAX`.

    Why one a bucket: every segment a host receives finds its socket by walking one
    chain of this hash. The kernel sizes it at boot from RAM (262,144 buckets for
    24 GiB); a million loopback connections are two million sockets, chains of ~8,
    walked for every message and every ACK (docs/tuning.rst).
    """
    return min(EHASH_MAX, 1 << max(0, sockets - 1).bit_length())


def backlog_needed(rate: float, connections: int) -> int:
    """The listen backlog that holds :data:`ACCEPT_SECONDS` of arrivals at ``rate`` a second
    while the server is busy; never more than there are connections to come."""
    return max(min(math.ceil(ACCEPT_SECONDS * rate), connections), 1)


def ports(text: str) -> set[int]:
    """Ports in a kernel port list such as ``8000,9000-9010`` (ip_local_reserved_ports)."""
    found: set[int] = set()
    for part in filter(None, text.replace(" ", "").split(",")):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def ephemeral_ports(proc_sys: str | Path = PROC_SYS) -> tuple[int, int] | None:
    """The first and last port the kernel picks source ports from; None when unreadable.

    It decides how many connections one source address can open to one server
    ip:port, and whether the server's own port can be taken by an outgoing connection.
    """
    words = (read_sysctl("net.ipv4.ip_local_port_range", proc_sys) or "").split()
    try:
        low, high = int(words[0]), int(words[1])
    except (IndexError, ValueError):
        return None
    return low, high


def ports_per_source(span: tuple[int, int]) -> int:
    """Connections one source address can open to one server ip:port: one per ephemeral port."""
    return max(span[1] - span[0] + 1, 1)


def source_addresses_needed(connections: int, span: tuple[int, int]) -> int:
    """Client addresses ``connections`` to one server ip:port need, given the ephemeral range."""
    return max(math.ceil(connections / ports_per_source(span)), 1)


# -- what the server checks at start -----------------------------------------------------

@dataclass(frozen=True)
class Floor:
    """A sysctl whose value must be at least what the connections on this host need."""

    name: str
    #: (connections, sockets on this host) -> the least value that holds them.
    needed: Callable[[int, int], int]
    #: Why it matters, printed beside a value that is too low.
    why: str
    #: Absent on kernels without the module (nf_conntrack): then nothing to check.
    optional: bool = False


FILE_MAX = Floor("fs.file-max", lambda connections, sockets: sockets + HOST_FILES,
                 "every socket is a file, system-wide; both ends count when the flood runs here")
SOMAXCONN = Floor("net.core.somaxconn", lambda connections, sockets: ACCEPT_BURST,
                  "caps the listen backlog: a burst of new connections beyond it is dropped")
CONNTRACK_MAX = Floor("net.netfilter.nf_conntrack_max",
                      lambda connections, sockets: connections + HOST_FILES,
                      "one conntrack entry per connection while netfilter tracks; full table "
                      "drops SYNs", optional=True)
#: The sysctls that bound one server's own connections, checked by :func:`startup_problems`.
AT_START: tuple[Floor, ...] = (FILE_MAX, SOMAXCONN, CONNTRACK_MAX)


@dataclass
class Check:
    """One limit against what the connections need: a row of ``comet.tune``'s table.

    ``verdict`` is ``ok``, ``CHANGE`` (can be fixed here), ``CANNOT`` (only whoever
    starts the host or container can), ``MISSING``/``absent`` (not readable), ``SHORT``
    or ``note``; ``new`` is the value ``comet.tune --apply`` would write (sysctls only).
    """

    setting: str
    current: str
    needed: str
    verdict: str
    advice: str = ""
    new: str | None = None

    @property
    def off(self) -> bool:
        return self.verdict in ("CHANGE", "CANNOT")


def open_files_checks(per_process: int, connections: int) -> list[Check]:
    """This process's RLIMIT_NOFILE, soft and hard, against ``per_process`` connections.

    When the hard limit is short the way out is more processes, so the advice says how
    many ``connections`` in all would take: the master's workers over Redis.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = open_files_needed(per_process)
    shown = f">= {need}"
    checks = [Check("RLIMIT_NOFILE soft", str(soft), shown, "ok" if soft >= need else "CHANGE",
                    f"per-process open files: ulimit -n {min(need, hard)}, LimitNOFILE in "
                    "conf/comet.service, or conf/limits.conf")]
    if hard >= need:
        checks.append(Check("RLIMIT_NOFILE hard", str(hard), shown, "ok"))
        return checks
    procs = processes_needed(connections, hard)
    instead = (f"instead run {procs} processes of <= {connections_per_process(hard):,} "
               f"connections each (--workers {procs} checks that): python -m comet.server "
               f"--workers {procs} --redis URL, one server whose workers deliver to each "
               "other's clients through Redis")
    if can_raise_hard_limits():
        checks.append(Check("RLIMIT_NOFILE hard", str(hard), shown, "CHANGE",
                            "raise in conf/limits.conf or LimitNOFILE (<= fs.nr_open); or "
                            + instead))
    else:
        checks.append(Check("RLIMIT_NOFILE hard", str(hard), shown, "CANNOT",
                            f"the hard limit {hard:,} cannot be raised from inside this host or "
                            "container (no CAP_SYS_RESOURCE: whoever starts it sets it); "
                            + instead))
    return checks


def startup_problems(max_connections: int, port: int, *,
                     proc_sys: str | Path = PROC_SYS) -> list[str]:
    """Limits that will bite this server's own settings, as sentences for its start-up log.

    Only what matters for ``--max-connections`` and ``--port`` on this host: the
    :data:`AT_START` sysctls, the open-files limits, and the port inside the ephemeral
    range (a client may take it as its source port, and a restart then cannot bind).
    Reads only; a value it cannot read is skipped rather than failing the start.
    """
    problems = []
    for floor in AT_START:
        needed = floor.needed(max_connections, max_connections)
        current = read_sysctl(floor.name, proc_sys)
        if current is not None and current.isdigit() and int(current) < needed:
            problems.append(f"{floor.name} = {current}, needs >= {needed} for --max-connections "
                            f"{max_connections}: {floor.why} (sysctl -w {floor.name}='{needed}')")
    problems += [f"{c.setting} = {c.current}, needs {c.needed} for --max-connections "
                 f"{max_connections}: {c.advice}"
                 for c in open_files_checks(max_connections, max_connections) if c.off]
    span = ephemeral_ports(proc_sys)
    reserved = read_sysctl("net.ipv4.ip_local_reserved_ports", proc_sys) or ""
    if port and span and span[0] <= port <= span[1] and port not in ports(reserved):
        problems.append(
            f"port {port} is inside net.ipv4.ip_local_port_range {span[0]}-{span[1]} and not in "
            "net.ipv4.ip_local_reserved_ports: an outgoing connection may take it as its "
            "source port and a restart then cannot bind "
            f"(sysctl -w net.ipv4.ip_local_reserved_ports={port})")
    return problems

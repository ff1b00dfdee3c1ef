"""Capacity plan: how much RAM, how many processes and source addresses N connections take.

This module owns the per-connection figures and the arithmetic on them; it reads
nothing from the host (``comet.tune`` passes the host's limits in) and knows nothing of
sysctl files. Processes per open-files limit and source addresses per port range are
:mod:`comet.hostlimits`' arithmetic, shared with the server and the flood. The figures
are measured, never guessed: either a benchmark's JSON (``python -m flood.bench
--json``, loaded by :func:`load_figures`) or :data:`DEFAULT_FIGURES`, which
``docs/tuning.rst`` traces to the measurements behind them.

Theory: an idle connection costs server userland memory (its greenlet, socket object and
stream state) plus kernel slab for each TCP socket (tcp sock, inode, file, dentry, epoll
item). Socket buffers cost nothing while clients read what they are sent; they cost up to
the initial send buffer per connection when a client stops reading, until the server drops it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from comet.hostlimits import (
    FLOOD_FD_MARGIN,
    SERVER_FD_MARGIN,
    ports_per_source,
    processes_needed,
    source_addresses_needed,
)

KIB_PER_GIB = 1024 * 1024

#: The server's transports, by the path they are served on (/test/, /events/, /poll/, /ws/).
TRANSPORTS = ("test", "events", "poll", "ws")


@dataclass(frozen=True)
class Figures:
    """Measured memory per connection, with where it was measured."""

    #: transport ("test", "events", "poll", "ws") -> KB of server RSS per connection.
    server_kb: dict[str, float]
    #: KB of kernel memory (slab) per TCP socket: one end of a connection.
    kernel_kb_per_socket: float
    #: Where the figures come from, printed beside them.
    source: str
    #: Transports with no figure of their own, printed so nobody mistakes them for measured.
    unmeasured: tuple[str, ...] = field(default=())

    @property
    def worst_server_kb(self) -> float:
        return max(self.server_kb.values())


#: Measured on this machine (issues 5 and 6; docs/benchmarks.rst has later figures): 10,000
#: idle /test/ connections on a naive gevent pywsgi server cost 16.9 KB of server RSS each; the
#: kernel's slab grows about 4 KB per TCP socket. The other transports have not been measured yet.
DEFAULT_FIGURES = Figures(
    server_kb={"test": 16.9},
    kernel_kb_per_socket=4.0,
    source="defaults (naive gevent pywsgi at 10,000 idle /test/ connections; "
           "kernel slab per TCP socket): docs/tuning.rst",
    unmeasured=("events", "poll", "ws"),
)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{where} must be a positive number of KB, not {value!r}")
    return float(value)


def _bench_kernel(row: dict) -> object:
    """flood.bench's kernel figure: slab growth plus TCP buffer pages, per connection."""
    slab, pages = row.get("slab_kb_per_conn"), row.get("tcp_mem_kb_per_conn") or 0
    return slab + pages if isinstance(slab, (int, float)) and isinstance(pages, (int, float)) \
        else slab


def load_figures(path: str | Path) -> Figures:
    """Read per-connection figures from a benchmark's JSON, so the plan follows measurements.

    ``python -m flood.bench --json`` writes ``server_kb_per_conn`` (the /test/ transport),
    ``slab_kb_per_conn`` and ``tcp_mem_kb_per_conn``, measured on loopback. Also accepted
    (docs/tuning.rst)::

        {"server_kb_per_conn": 16.9, "kernel_kb_per_conn": 8.1, "loopback": true,
         "transports": {"test": {"server_kb_per_conn": 16.9, "kernel_kb_per_conn": 8.0}}}

    The kernel figure is growth per connection as measured; on loopback (``loopback``
    true, the default, as flood.bench runs) both ends were counted, so a socket is half.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top")
    rows = dict(data.get("transports") or {})
    if "server_kb_per_conn" in data:
        rows.setdefault(data.get("transport", "test"), data)
    server, kernel = {}, []
    for name, row in rows.items():
        if not isinstance(row, dict) or "server_kb_per_conn" not in row:
            raise ValueError(f"{path}: transport {name!r} has no server_kb_per_conn")
        server[name] = _number(row["server_kb_per_conn"], f"{path}: {name}.server_kb_per_conn")
        if "kernel_kb_per_conn" in row or "slab_kb_per_conn" in row:
            kernel.append(_number(row.get("kernel_kb_per_conn", _bench_kernel(row)),
                                  f"{path}: {name}.kernel_kb_per_conn"))
    if not server:
        raise ValueError(f"{path}: no server_kb_per_conn (top level or under \"transports\")")
    ends = 2 if data.get("loopback", True) else 1
    per_socket = max(kernel) / ends if kernel else DEFAULT_FIGURES.kernel_kb_per_socket
    source = f"{path}" + ("" if kernel else " (kernel: default 4 KB per socket)")
    return Figures(server, per_socket, source, tuple(t for t in TRANSPORTS if t not in server))


def sockets(connections: int, loopback: bool) -> int:
    """TCP sockets on this host: the server's end, and the client's too when it runs here."""
    return connections * (2 if loopback else 1)


def memory_needed_kib(figures: Figures, connections: int, loopback: bool) -> int:
    """RAM for idle connections whose clients read: worst transport + kernel slab."""
    server = connections * figures.worst_server_kb
    kernel = sockets(connections, loopback) * figures.kernel_kb_per_socket
    return math.ceil(server + kernel)


def gib(kib: float) -> str:
    return f"{kib / KIB_PER_GIB:.2f} GiB"


def plan_lines(figures: Figures, connections: int, *, loopback: bool, nofile_hard: int,
               port_range: tuple[int, int], wmem_initial: int, available_kib: int) -> list[str]:
    """The capacity plan as printable lines: each number with the figure it comes from."""
    n = connections
    lines = [f"Capacity plan for {n:,} connections (figures: {figures.source})"]
    for name, kb in sorted(figures.server_kb.items()):
        lines.append(f"  server userland, {name:6}  {n:,} x {kb:g} KB = {gib(n * kb)}")
    if figures.unmeasured:
        lines.append(f"  server userland, {', '.join(sorted(figures.unmeasured))}: not measured "
                     "yet (python -m flood.bench --json, then --from)")
    ends = "both ends: the flood runs here" if loopback else "server end"
    k = sockets(n, loopback) * figures.kernel_kb_per_socket
    lines.append(f"  kernel slab             {sockets(n, loopback):,} sockets ({ends}) x "
                 f"{figures.kernel_kb_per_socket:g} KB = {gib(k)}")
    need = memory_needed_kib(figures, n, loopback)
    verdict = "fits" if need <= available_kib else "does NOT fit"
    lines.append(f"  total while clients read {gib(need)}: {verdict} in {gib(available_kib)} "
                 "available")
    lines.append(f"  socket buffers          ~0 while clients read; if all stop reading, up to "
                 f"{n:,} x {wmem_initial // 1024} KiB (tcp_wmem initial) = "
                 f"{gib(n * wmem_initial / 1024)}, capped by tcp_mem")
    procs = processes_needed(n, nofile_hard)
    lines.append(f"  server processes        {procs} (open files per process: {nofile_hard:,} "
                 f"hard, {SERVER_FD_MARGIN:,} kept for the process itself)"
                 + (f"; more than one: --workers {procs} --redis URL, one server through "
                    "Redis" if procs > 1 else ""))
    lines.append(f"  flood source addresses  {source_addresses_needed(n, port_range)} in "
                 f"127.0.0.0/8 or on the client's NICs ({ports_per_source(port_range):,} "
                 f"ephemeral ports each, ip_local_port_range {port_range[0]} {port_range[1]}); "
                 f"flood processes: {processes_needed(n, nofile_hard, FLOOD_FD_MARGIN)} "
                 f"({FLOOD_FD_MARGIN} files kept each)")
    return lines

"""Capacity plan: the memory, processes and source addresses an experiment of N connections takes.

This module owns the measured figures and the arithmetic on them; it reads nothing from
the host (its callers, ``comet.tune`` and bench's pre-check, pass the host's limits in)
and knows nothing of sysctl files. It imports only :mod:`comet.hostlimits` and the
standard library, so that the flood's bench can check a run against it
(``flood.precheck``). Processes per open-files limit and source addresses per port range
are :mod:`comet.hostlimits`' arithmetic, shared with the server and the flood. The
figures are measured, never guessed: either a benchmark's JSON (``python -m flood.bench
--json``, read by :func:`comet.benchjson.load_figures`) or :data:`DEFAULT_FIGURES`,
which ``docs/tuning.rst`` traces to the measurements behind them.

Theory: the memory an experiment takes on one host is what grows with its connections
plus what each of its processes costs before the first one (:func:`memory_terms`).
Growing: the server's userland per connection (stream state, socket object: PSS summed
over its processes, which share pages), Redis per subscribed id when the server is
several processes, the flood's record per connection when the flood runs here, and
kernel slab per TCP socket (tcp sock, inode, file, dentry, epoll item), both ends of
every connection when the flood runs here. Fixed: each server process's own PSS, Redis's
own RSS, each flood process's own RSS, and the URLs: each flood process keeps its share
of the URL file, so together they hold each URL once. Socket buffers
cost nothing while clients read what they are sent; a client that stops reading pins
what it was sent, up to the initial send buffer before the server drops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from comet.hostlimits import (
    FLOOD_FD_MARGIN,
    SERVER_FD_MARGIN,
    ports_per_source,
    processes_needed,
    source_addresses_needed,
)

KIB_PER_GIB = 1024 * 1024
#: The unit of ``net.ipv4.tcp_mem`` and of socket buffer accounting (x86-64, arm64).
PAGE_KIB = 4

#: The server's transports, by the path they are served on (/test/, /events/, /poll/, /ws/).
TRANSPORTS = ("test", "events", "poll", "ws")
#: flood's name for each transport (``flood.bench --transport``, the JSON's ``transport``)
#: -> the server's, the path it is served on.
BENCH_TRANSPORTS = {"stream": "test", "sse": "events", "poll": "poll", "ws": "ws"}

#: Kept free beyond the model's total: its accuracy target (issue 11: within 10% of a
#: measured run), so that an error that large still leaves the OOM killer out of reach.
MEMORY_MARGIN = 0.10


@dataclass(frozen=True)
class Figures:
    """Measured memory per connection and per process (KB = KiB), with where each comes from."""

    #: transport ("test", "events", "poll", "ws") -> server userland per connection (PSS).
    server_kb: dict[str, float]
    #: Kernel memory (slab) per TCP socket: one end of a connection.
    kernel_kb_per_socket: float
    #: Redis per connection (its subscribed id), when the server is several processes.
    redis_kb: float = 0.0
    #: The flood's RSS per connection it holds.
    flood_kb: float = 0.0
    #: One server process before its first connection (PSS, after bench's warm-up).
    server_process_kb: float = 0.0
    #: A redis-server before the first id (RSS).
    redis_process_kb: float = 0.0
    #: One flood process before it reads its URLs (RSS: the interpreter, gevent, flood).
    flood_process_kb: float = 0.0
    #: Each URL of the run, in the one flood process whose share it is.
    flood_url_kb: float = 0.0
    #: Where the figures come from, printed in the plan's title.
    source: str = ""
    #: Figure name (a field above) -> where that one comes from, printed beside its term.
    origin: dict[str, str] = field(default_factory=dict)
    #: Transports with no figure of their own, printed so nobody mistakes them for measured.
    unmeasured: tuple[str, ...] = ()
    #: What the source run grew in all (KiB: server, Redis, flood, slab) and the connections
    #: it held, printed beside the model's prediction for that many.
    measured: tuple[float, int] | None = None

    @property
    def worst_server_kb(self) -> float:
        return max(self.server_kb.values())

    def server_kb_for(self, transport: str | None) -> tuple[str, float]:
        """The transport's own figure; the worst measured one for None or an unmeasured one."""
        if transport in self.server_kb:
            return transport, self.server_kb[transport]
        worst = max(self.server_kb, key=self.server_kb.__getitem__)
        return worst, self.server_kb[worst]


_MILLION = "the million (docs/tuning.rst)"
#: Measured on this machine, traced in docs/tuning.rst ("Where the default figures come
#: from"): the million run (998,466 /test/ streams held over 56 workers, Redis and 51 flood
#: processes; docs/benchmarks.rst), the SSE million, and 10,000 held on one process for
#: WebSocket and long-poll.
DEFAULT_FIGURES = Figures(
    server_kb={"test": 0.43, "events": 0.44, "ws": 0.58, "poll": 0.90},
    kernel_kb_per_socket=5.0,
    redis_kb=0.22,
    flood_kb=0.32,
    server_process_kb=11_700,
    redis_process_kb=15_800,
    flood_process_kb=26_500,
    flood_url_kb=0.102,
    source="defaults: docs/tuning.rst",
    origin={"server_kb": "test, events: PSS at the million and the SSE million; ws, poll: "
                         "10,000 on one process",
            "kernel_kb_per_socket": f"slab, {_MILLION}, over its two ends",
            "redis_kb": f"Redis RSS, {_MILLION}", "flood_kb": f"flood RSS, {_MILLION}",
            "server_process_kb": f"PSS before, {_MILLION}",
            "redis_process_kb": f"Redis RSS before, {_MILLION}",
            "flood_process_kb": "RSS of a flood.worker with no URL",
            "flood_url_kb": "1,000,000 URLs read by one process (docs/tuning.rst)"},
)


def sockets(connections: int, loopback: bool) -> int:
    """TCP sockets on this host: the server's end, and the client's too when it runs here."""
    return connections * (2 if loopback else 1)


@dataclass(frozen=True)
class Experiment:
    """What runs on this host for N connections: the parts whose memory is this host's."""

    connections: int
    #: The server's processes here (a master and its workers, or one); 0: it runs elsewhere
    #: or already runs, so it grows but is not this plan's (``flood.bench --target``).
    server_processes: int = 1
    #: A Redis on this host holds the server's ids (a server of several processes).
    redis: bool = False
    #: ... and it is started for the experiment, so its own memory counts too.
    redis_started: bool = False
    #: Flood processes on this host (each keeps its share of the URLs); 0: clients elsewhere.
    flood_processes: int = 0
    #: The clients' transport (the server's name); None: the worst measured.
    transport: str | None = None
    #: Bytes each client leaves unread (``flood.bench --unread``): held in socket buffers.
    unread_bytes: int = 0

    @property
    def sockets(self) -> int:
        n = self.connections
        return n * (self.server_processes > 0) + n * (self.flood_processes > 0)


@dataclass(frozen=True)
class Term:
    """One part of the experiment's memory: its size, the arithmetic, the figure's origin."""

    name: str
    kib: float
    arithmetic: str
    origin: str
    #: Grows with the connections: the part a bench's before/after difference measures.
    grows: bool


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def unread_pages(unread_bytes: int) -> int:
    """Socket buffer pages one connection holds with ``unread_bytes`` sent and not read:
    the data rounded up to pages and one more for the queue (64 KiB held ~68 KB here)."""
    return math.ceil(unread_bytes / (PAGE_KIB * 1024)) + 1 if unread_bytes > 0 else 0


def memory_terms(figures: Figures, exp: Experiment) -> list[Term]:
    """Every part of the experiment's memory on this host, the growing ones first."""
    n, o = exp.connections, figures.origin
    terms = []
    if exp.server_processes:
        transport, kb = figures.server_kb_for(exp.transport)
        terms.append(Term(f"server userland, {transport}", n * kb, f"{n:,} x {kb:.3g} KB",
                          o.get("server_kb", ""), True))
    if exp.redis:
        terms.append(Term("Redis, per id", n * figures.redis_kb,
                          f"{n:,} x {figures.redis_kb:.3g} KB", o.get("redis_kb", ""), True))
    if exp.flood_processes:
        terms.append(Term("flood, per connection", n * figures.flood_kb,
                          f"{n:,} x {figures.flood_kb:.3g} KB", o.get("flood_kb", ""), True))
    ends = ("both ends: the flood runs here" if exp.server_processes and exp.flood_processes
            else "server end" if exp.server_processes else "client end: the server is elsewhere")
    terms.append(Term("kernel slab", exp.sockets * figures.kernel_kb_per_socket,
                      f"{exp.sockets:,} sockets ({ends}) x {figures.kernel_kb_per_socket:.3g} KB",
                      o.get("kernel_kb_per_socket", ""), True))
    if exp.unread_bytes:
        pages = unread_pages(exp.unread_bytes)
        terms.append(Term("socket buffers, unread", n * pages * PAGE_KIB,
                          f"{n:,} x {pages} pages ({exp.unread_bytes:,} B unread)",
                          "what the kernel holds for a client that does not read", True))
    if exp.server_processes:
        terms.append(Term("server processes' own", exp.server_processes * figures.server_process_kb,
                          f"{exp.server_processes} x {_mib(figures.server_process_kb)}",
                          o.get("server_process_kb", ""), False))
    if exp.redis_started:
        terms.append(Term("Redis's own", figures.redis_process_kb,
                          f"1 x {_mib(figures.redis_process_kb)}",
                          o.get("redis_process_kb", ""), False))
    if exp.flood_processes:
        terms.append(Term("flood processes' own",
                          exp.flood_processes * figures.flood_process_kb + n * figures.flood_url_kb,
                          f"{exp.flood_processes} x {_mib(figures.flood_process_kb)} + {n:,} "
                          f"URLs x {figures.flood_url_kb:.3g} KB (each in one process's share)",
                          f"{o.get('flood_process_kb', '')}; {o.get('flood_url_kb', '')}", False))
    return terms


def memory_needed_kib(figures: Figures, exp: Experiment) -> int:
    """RAM the whole experiment takes while its clients read: every term of :func:`memory_terms`."""
    return math.ceil(sum(term.kib for term in memory_terms(figures, exp)))


def with_margin(kib: float) -> int:
    """What must be available for a total of ``kib``: the total and :data:`MEMORY_MARGIN`."""
    return math.ceil(kib * (1 + MEMORY_MARGIN))


def most_connections(figures: Figures, experiment_for: Callable[[int], Experiment],
                     available_kib: int, at_most: int) -> int:
    """The most connections (up to ``at_most``) whose experiment fits, margin included.

    ``experiment_for(n)`` says what runs for n connections (flood processes grow with n),
    so the answer accounts for the processes too; 0 when not even one fits.
    """
    low, high = 0, at_most
    while low < high:
        mid = (low + high + 1) // 2
        if with_margin(memory_needed_kib(figures, experiment_for(mid))) <= available_kib:
            low = mid
        else:
            high = mid - 1
    return low


def socket_buffer_pages(connections: int, unread_bytes: int, backlog: int) -> int:
    """TCP buffer pages the experiment holds at once (what ``net.ipv4.tcp_mem`` must allow):
    a page for each request waiting in a listen backlog, and what each client leaves unread."""
    return backlog + connections * unread_pages(unread_bytes)


def gib(kib: float) -> str:
    return f"{kib / KIB_PER_GIB:,.2f} GiB"


def _label(name: str) -> str:
    return f"  {name:<25}"


def memory_lines(figures: Figures, exp: Experiment, available_kib: int) -> list[str]:
    """The memory part of the plan: each term with its arithmetic and origin, then the totals,
    and beside them what the run the figures come from measured, when it had this shape."""
    terms = memory_terms(figures, exp)
    lines = [f"{_label(t.name)}{t.arithmetic} = {gib(t.kib)}  [{t.origin}]" for t in terms]
    grows = sum(t.kib for t in terms if t.grows)
    lines.append(f"{_label('grows with connections')}{gib(grows)}")
    if figures.measured and exp.server_processes and exp.flood_processes \
            and not exp.unread_bytes:
        grew, held = figures.measured
        there = sum(t.kib for t in memory_terms(figures, replace(exp, connections=held))
                    if t.grows)
        lines.append(f"{_label('  measured')}{gib(grew)} grew for {held:,} held in "
                     f"{figures.source}; this model there: {gib(there)} "
                     f"({round((there - grew) / grew, 3) + 0.0:+.1%})")
    total = memory_needed_kib(figures, exp)
    verdict = "fits" if with_margin(total) <= available_kib else "does NOT fit"
    lines.append(f"{_label('total while clients read')}{gib(total)}; with the "
                 f"{MEMORY_MARGIN:.0%} margin {gib(with_margin(total))}: {verdict} in "
                 f"{gib(available_kib)} available")
    return lines


def plan_lines(figures: Figures, exp: Experiment, *, nofile_hard: int,
               port_range: tuple[int, int], wmem_initial: int, available_kib: int) -> list[str]:
    """The capacity plan as printable lines: each number with the figure it comes from."""
    n = exp.connections
    parts = [f"{exp.server_processes} server process(es)" if exp.server_processes else
             "the server elsewhere", "Redis" if exp.redis else "",
             f"{exp.flood_processes} flood processes here" if exp.flood_processes else
             "the flood elsewhere"]
    measured = ", ".join(f"{name} {kb:.3g} KB" for name, kb in sorted(figures.server_kb.items()))
    unmeasured = (f"; {', '.join(sorted(figures.unmeasured))}: not measured yet (python -m "
                  "flood.bench --json, then --from)" if figures.unmeasured else "")
    lines = [f"Capacity plan for {n:,} connections ({', '.join(filter(None, parts))}; "
             f"figures: {figures.source})",
             f"{_label('server userland by path')}{measured}{unmeasured}",
             *memory_lines(figures, exp, available_kib)]
    lines.append(f"{_label('socket buffers')}~0 while clients read; if all stop reading, up to "
                 f"{n:,} x {wmem_initial // 1024} KiB (tcp_wmem initial) = "
                 f"{gib(n * wmem_initial / 1024)}, capped by tcp_mem")
    procs = processes_needed(n, nofile_hard)
    lines.append(f"{_label('server processes')}{procs} (open files per process: "
                 f"{nofile_hard:,} hard, {SERVER_FD_MARGIN:,} kept for the process itself)"
                 + (f"; more than one: --workers {procs} --redis URL, one server through "
                    "Redis" if procs > 1 else ""))
    lines.append(f"{_label('flood source addresses')}{source_addresses_needed(n, port_range)} in "
                 f"127.0.0.0/8 or on the client's NICs ({ports_per_source(port_range):,} "
                 f"ephemeral ports each, ip_local_port_range {port_range[0]} {port_range[1]}); "
                 f"flood processes: {processes_needed(n, nofile_hard, FLOOD_FD_MARGIN)} "
                 f"({FLOOD_FD_MARGIN} files kept each)")
    return lines

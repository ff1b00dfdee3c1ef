"""What a server holds when idle, and whether it came back: the churn soak's checks.

A server that churned through connections must end where it started: every
connection, id, timer and subscription it took given back, its descriptors
closed, its memory returned to the allocator. :func:`take` reads that state
(``/stats``, ``/proc/PID/fd`` of each process ``/stats`` names, and Redis itself
when given its URL); :func:`verdicts` compares two states, and is pure, so the
checks are tested with numbers of states that did not come back.

"Start" is the state after a warm-up churn (``flood.churn`` runs one first):
a fresh process allocates once what it keeps for its life (imports done
lazily, gevent's hub and pools, redis-py's connection pool, pymalloc arenas
and glibc heap grown to the peak of connections in flight, the history filled
to its bound), and counting that as growth would blame the soak for the first
minute of the process's life. After the warm-up that peak has been reached,
so what is left above it at the end is what the churn kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import gevent.socket
import psutil
import redis
import redis.connection

from flood.chunked import ChunkedDecoder
from flood.head import parse_head, split_head

#: memory may end at most this fraction above the start (issue 12's soak target)
MEMORY_MARGIN = 0.10
#: the Redis broker's key prefix and its channels (comet/broker/redisscripts.py)
PREFIX = "comet"
BROADCAST_CHANNEL = "{*}"


@dataclass
class State:
    """One reading of an idle server. Counts are whole-server sums across workers."""

    #: label ("server", "master", "worker 0", ...) -> pid
    pids: dict = field(default_factory=dict)
    #: label -> resident bytes, as the process itself reports it in /stats
    rss: dict = field(default_factory=dict)
    #: label -> open descriptors (/proc/PID/fd entries), None where unreadable; with a
    #: Redis URL, less the connections to that Redis (:attr:`redis_fds`)
    fds: dict = field(default_factory=dict)
    #: label -> connections to the server's Redis: its client's pool, which keeps what
    #: it opened (up to its bound) for the process's life, and the pub/sub connection;
    #: shown, not held to the start (a pool that grew by one is not a leak)
    redis_fds: dict = field(default_factory=dict)
    connections: int = 0
    ids: int = 0
    timers: int = 0
    token_timers: int = 0
    #: ids the Redis broker has subscribed (None: a broker without subscriptions)
    subscribed_ids: int | None = None
    #: messages the in-process broker's history keeps (None: another broker); shown only
    history_kept: int | None = None
    #: id channels Redis lists (PUBSUB CHANNELS, the broadcast channel left out); None
    #: when no Redis URL was given
    redis_channels: int | None = None
    #: subscribers Redis counts on the churned ids' channels (PUBSUB NUMSUB, summed)
    redis_numsub: int | None = None

    @property
    def rss_total(self) -> int:
        return sum(self.rss.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "rss_total": self.rss_total}


@dataclass
class Check:
    name: str
    start: object
    end: object
    ok: bool
    why: str

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name}: start {self.start}, end {self.end}: {self.why}"


def server_stats(host: str, port: int, timeout: float = 10.0) -> dict:
    """``GET /stats`` on a connection of its own, closed by the server after the answer."""
    with gevent.socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET /stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    parts = split_head(answer)
    if parts is None or parse_head(parts[0]).status != 200:
        raise RuntimeError(f"/stats answered {answer[:80]!r}")
    body = parts[1]
    if b"chunked" in parts[0].lower():
        body = b"".join(ChunkedDecoder().feed(body))
    return json.loads(body)


def processes(stats: dict) -> tuple[dict, dict]:
    """(label -> pid, label -> RSS) of every server process ``/stats`` names."""
    if "workers" not in stats:
        return {"server": stats["pid"]}, {"server": stats["rss_bytes"]}
    pids, rss = {}, {}
    master = stats.get("master", {})
    if "pid" in master:
        pids["master"], rss["master"] = master["pid"], master.get("rss_bytes") or 0
    for worker in stats["workers"]:
        label = f"worker {worker.get('index')}"
        if "error" in worker:
            pids[label], rss[label] = worker.get("pid"), 0
            continue
        pids[label], rss[label] = worker["pid"], worker["rss_bytes"]
    return pids, rss


def descriptors(pid: int | None) -> int | None:
    """Entries of ``/proc/PID/fd``; None when the process is not here or not ours to read."""
    if pid is None:
        return None
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def redis_connections(pid: int | None, url: str) -> int:
    """Sockets of ``pid`` connected to the Redis of ``url`` (0 where unreadable)."""
    if pid is None:
        return 0
    where = redis.connection.parse_url(url)
    host, port = where.get("host", "127.0.0.1"), int(where.get("port", 6379))
    try:
        address = gevent.socket.gethostbyname(host)
        return sum(1 for c in psutil.Process(pid).net_connections(kind="inet")
                   if c.raddr and (c.raddr.ip, c.raddr.port) == (address, port))
    except (OSError, psutil.Error):
        return 0


def redis_counts(url: str, ids: list[str]) -> tuple[int, int]:
    """(id channels Redis has subscribers on, subscribers on the churned ids' channels).

    Asked of Redis itself, so a broker whose own count drifted from what it told
    Redis shows here. The broadcast channel, subscribed by every process for its
    life, is left out.
    """
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        return _count(client, ids)
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis: {exc}") from None
    finally:
        client.close()


def _count(client, ids: list[str]) -> tuple[int, int]:
    broadcast = f"{PREFIX}:{BROADCAST_CHANNEL}:c".encode()
    listed = [c for c in client.pubsub_channels(f"{PREFIX}:{{*}}:c") if c != broadcast]
    numsub = 0
    for start in range(0, len(ids), 1000):
        names = [f"{PREFIX}:{{{id}}}:c" for id in ids[start:start + 1000]]
        numsub += sum(count for _, count in client.pubsub_numsub(*names))
    return len(listed), numsub


def take(host: str, port: int, redis_url: str | None = None,
         ids: list[str] | None = None) -> State:
    """The server's state now: its /stats, its processes' descriptors, and Redis's view."""
    stats = server_stats(host, port)
    pids, rss = processes(stats)
    broker = stats.get("broker", {})
    state = State(pids=pids, rss=rss, fds={label: descriptors(pid) for label, pid in pids.items()},
                  connections=stats["connections"]["total"], ids=stats["ids"],
                  timers=stats.get("timers", 0), token_timers=stats.get("token_timers", 0),
                  subscribed_ids=broker.get("subscribed_ids"),
                  history_kept=broker.get("kept"))
    if redis_url:
        state.redis_channels, state.redis_numsub = redis_counts(redis_url, ids or [])
        state.redis_fds = {label: redis_connections(pid, redis_url)
                           for label, pid in pids.items()}
        state.fds = {label: None if n is None else n - state.redis_fds[label]
                     for label, n in state.fds.items()}
    return state


def verdicts(start: State, end: State, margin: float = MEMORY_MARGIN) -> list[Check]:
    """Each check of the soak: memory, descriptors, and every structure back to the start."""
    checks = [_memory(start, end, margin), *_descriptors(start, end)]
    for name, what in (("connections held", "connections"), ("ids in the router", "ids"),
                       ("timer wheel entries", "timers"), ("token timers", "token_timers"),
                       ("broker subscriptions", "subscribed_ids"),
                       ("Redis id channels (PUBSUB CHANNELS)", "redis_channels"),
                       ("Redis subscribers of the ids (PUBSUB NUMSUB)", "redis_numsub")):
        before, after = getattr(start, what), getattr(end, what)
        if before is None and after is None:
            continue
        checks.append(_back(name, before, after))
    return checks


def _memory(start: State, end: State, margin: float) -> Check:
    limit = start.rss_total * (1 + margin)
    ok = 0 < end.rss_total <= limit and set(end.pids.items()) == set(start.pids.items())
    why = (f"{end.rss_total / 2**20:.1f} MiB against at most {limit / 2**20:.1f} MiB "
           f"({margin:.0%} over the start, after the warm-up)")
    if set(end.pids.items()) != set(start.pids.items()):
        why = f"the server's processes changed (a worker restarted?): {start.pids} -> {end.pids}"
    return Check("resident memory", _mib(start.rss_total), _mib(end.rss_total), ok, why)


def _descriptors(start: State, end: State) -> list[Check]:
    checks = []
    for label, pid in start.pids.items():
        before, after = start.fds.get(label), end.fds.get(label)
        name = f"open descriptors of {label} (pid {pid})"
        if label in end.redis_fds:
            name += (f", its {start.redis_fds.get(label, 0)} -> {end.redis_fds[label]} "
                     "connections to Redis aside")
        if end.pids.get(label) != pid:
            checks.append(Check(name, before, after, False, "the process is gone or replaced"))
        elif before is None or after is None:
            checks.append(Check(name, before, after, False,
                                f"/proc/{pid}/fd unreadable: run on the server's host as "
                                "its user"))
        else:
            checks.append(Check(name, before, after, after <= before,
                                "back to the start" if after <= before
                                else f"{after - before} more than at the start"))
    return checks


def _back(name: str, before, after) -> Check:
    if before is None or after is None:
        return Check(name, before, after, False, "not read at both ends")
    if after > before:
        return Check(name, before, after, False, f"{after - before} left behind")
    return Check(name, before, after, True,
                 "empty" if after == 0 else "back to the start (others held them before)")


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"

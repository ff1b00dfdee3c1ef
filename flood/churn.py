"""``python -m flood.churn URL``: connects and disconnects by the thousand while messages
flow; then, once the server is idle, whether everything it took was given back.

A push server's real load is not a crowd that stays: it is users coming and
going all day, each leaving through another door. So the churn makes
``--total`` connections, at most ``--concurrency`` at a time, each to one of the
four transports (``/test/``, ``/events/``, ``/ws/``, ``/poll/``) and an id drawn
from ``--ids`` (a quarter of them logged in as a second id with ``?id=``), held
a random time up to ``--hold`` seconds, and ended one of three ways: abruptly
(RST: ``SO_LINGER`` 0, the kernel forgets the socket at once), cleanly (a FIN; a
WebSocket sends its close frame first), or mid-request (part of the head sent,
then a FIN or an RST). Meanwhile one publisher (:class:`flood.publisher.Publisher`,
with the key of :mod:`flood.publishkey`) sends ``--rate`` messages a second to
those ids, ``--batch`` to a ``POST /send`` (1: ``POST /send/<id>``).

The run, and what each reading is (:mod:`flood.serverstate`):

1. *before*: the server as found;
2. a warm-up churn (``--warmup`` connections, the same mix and concurrency),
   and ``--fill-history`` messages per id published in batches: the first-time
   allocations (see :mod:`flood.serverstate`) and the history's bounded content
   happen here, not in the soak. Then wait until the server is idle again;
3. *start*: the reading the verdicts compare with;
4. the churn itself, until ``--total`` connections were made or ``--for``
   seconds passed, whichever comes first;
5. *end*: once connections, ids, timers, subscriptions and descriptors are back
   (or ``--settle`` seconds passed: then whatever is left is reported).

Exit status 0 when every check holds, 1 when one fails, 2 when the run could
not be made. Imports nothing of comet's.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import gevent.socket

from flood import head, publishkey, serverstate, ws
from flood.chunked import DecodeError
from flood.head import HeadError
from flood.publisher import Publisher

#: the server's path for each transport
PATHS = {"test": "/test/", "events": "/events/", "ws": "/ws/", "poll": "/poll/"}
#: the ways a connection ends, and how often each is picked
ENDS = {"rst": 0.4, "clean": 0.4, "mid-request": 0.2}
#: seconds to connect or to get a response head before the attempt counts as failed
HEAD_TIMEOUT = 10.0
#: seconds between readings while waiting for the server to be idle
SETTLE_STEP = 0.5
#: messages per request when the history is filled, and bytes such a batch stays under
#: (the server's --max-batch is 1 MiB by default)
FILL_BATCH, FILL_BYTES = 500, 512 * 1024

EPILOG = """\
The 200,000-connection soak (issue 12), run against a server of its own:

  python -m comet.server --host 127.0.0.1 --port 8000 --interval 1 --heartbeat 1 \\
      --poll-timeout 5 > churn-server.log 2>&1 &
  python -m flood.churn http://127.0.0.1:8000 --total 200000 --concurrency 500 \\
      --for 3600 --json churn.json

With --workers N and Redis, give the same Redis to the churn, which then also
asks Redis itself (PUBSUB CHANNELS, PUBSUB NUMSUB):

  python -m comet.server ... --workers 4 --redis redis://127.0.0.1:6379/0 &
  python -m flood.churn http://127.0.0.1:8000 --total 200000 --concurrency 500 \\
      --redis redis://127.0.0.1:6379/0 --for 3600 --json churn.json

Run it on the server's host as the server's user (descriptors are read from
/proc/PID/fd). A fast --interval, --heartbeat and --poll-timeout let the
server find dead peers quickly in the plain life (it notices when it next
writes); the churn waits --settle seconds for that. Set --fill-history to the
server's --history (default 100) so that the in-process history, bounded by
it, is full before the start reading and its content is not counted as
growth. A publisher key, if the server needs one: --publish-key-file or
$COMET_PUBLISH_KEY_FOR_CLIENT.
"""


@dataclass
class Plan:
    """What the churn does; the defaults are the soak's shape, at a small size."""

    ids: list[str]
    total: int = 2000
    concurrency: int = 100
    transports: tuple[str, ...] = tuple(PATHS)
    hold: float = 0.5
    rate: float = 200.0
    batch: int = 20
    message_bytes: int = 100
    seconds: float = 600.0
    seed: int = 1


@dataclass
class Tally:
    """What the churn's connections and publisher met."""

    attempted: int = 0
    statuses: Counter = field(default_factory=Counter)
    #: by transport: connections that got their stream (200, 101) or long-poll sent
    opened: Counter = field(default_factory=Counter)
    ends: Counter = field(default_factory=Counter)
    #: the server ended a held connection before the client did
    server_ended: int = 0
    errors: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    published: int = 0
    publish_failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """Plain JSON (``asdict`` would rebuild each Counter from its items as keys)."""
        return {name: dict(value) if isinstance(value, Counter) else value
                for name, value in vars(self).items()}


def connection(host: str, port: int, plan: Plan, rng: random.Random, tally: Tally) -> None:
    """One connection: open, hold for a while reading what comes, end one of three ways."""
    transport = rng.choice(plan.transports)
    path = PATHS[transport] + rng.choice(plan.ids)
    if rng.random() < 0.25:
        path += "?id=" + rng.choice(plan.ids)
    extra = {"ws": ws.request_fields(), "events": b"Accept: text/event-stream\r\n"}
    request = head.request(host, port, path, extra.get(transport, b""))
    end = rng.choices(list(ENDS), weights=list(ENDS.values()))[0]
    tally.attempted += 1
    try:
        sock = gevent.socket.create_connection((host, port), timeout=HEAD_TIMEOUT)
    except OSError as exc:
        tally.errors[f"connect: {type(exc).__name__}"] += 1
        return
    try:
        if end == "mid-request":
            sock.sendall(request[:rng.randrange(1, len(request) - 2)])
            _end(sock, abrupt=rng.random() < 0.5)
            tally.ends[end] += 1
            return
        sock.sendall(request)
        if transport != "poll":  # a long-poll's head comes with its answer
            status = _head(sock, tally)
            if status not in (101, 200):
                _end(sock, abrupt=False)
                return
        tally.opened[transport] += 1
        if not _hold(sock, rng.uniform(0, plan.hold), tally):
            tally.server_ended += 1
        if end == "clean" and transport == "ws":
            sock.sendall(ws.client_frame(ws.CLOSE, struct.pack("!H", 1000)))
        _end(sock, abrupt=end == "rst")
        tally.ends[end] += 1
    except (OSError, HeadError) as exc:
        tally.errors[type(exc).__name__] += 1
    finally:
        sock.close()


def _head(sock: socket.socket, tally: Tally) -> int | None:
    """The response's status (its body's first bytes are counted and dropped)."""
    got = head.read_head(sock.recv)
    if got is None:
        tally.errors["closed before its head"] += 1
        return None
    answer, rest = got
    tally.statuses[answer.status] += 1
    tally.bytes_in += len(rest)
    return answer.status


def _hold(sock: socket.socket, seconds: float, tally: Tally) -> bool:
    """Read and drop what comes for ``seconds``; False if the server ended it first."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return True
        if not data:
            return False
        tally.bytes_in += len(data)
    return True


def _end(sock: socket.socket, abrupt: bool) -> None:
    """An RST (``SO_LINGER`` 0: the socket is dropped with what it held) or a FIN."""
    if abrupt:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    sock.close()


def publish(host: str, port: int, plan: Plan, rng: random.Random, tally: Tally,
            key: str | None, stop: gevent.event.Event) -> None:
    """``plan.rate`` messages a second to random ids of the plan until ``stop``."""
    publisher = Publisher(host, port, headers=publishkey.header_fields(key))
    interval, due, n = plan.batch / plan.rate, time.monotonic(), 0
    try:
        while not stop.is_set():
            items = []
            for _ in range(plan.batch):
                n += 1
                items.append((rng.choice(plan.ids), f"churn {n} ".ljust(plan.message_bytes, "x")))
            _post(publisher, items, tally)
            due += interval
            stop.wait(max(0.0, due - time.monotonic()))
    finally:
        publisher.close()


def _post(publisher: Publisher, items: list[tuple[str, str]], tally: Tally) -> None:
    try:
        if len(items) == 1:
            status, _ = publisher.post(f"/send/{items[0][0]}", items[0][1].encode())
        else:
            body = "\n".join(json.dumps({"id": id, "message": m}) for id, m in items)
            status, _ = publisher.post("/send", body.encode(), b"application/x-ndjson")
    except (OSError, HeadError, DecodeError) as exc:
        tally.publish_failed[type(exc).__name__] += len(items)
        return
    if status == 200:
        tally.published += len(items)
    else:
        tally.publish_failed[str(status)] += len(items)


def fill_history(host: str, port: int, plan: Plan, per_id: int, key: str | None,
                 tally: Tally) -> None:
    """``per_id`` messages to every id of the plan, in batches: the history at its bound."""
    publisher = Publisher(host, port, headers=publishkey.header_fields(key), timeout=30)
    items = [(id, f"fill {n} ".ljust(plan.message_bytes, "x"))
             for n in range(per_id) for id in plan.ids]
    step = max(1, min(FILL_BATCH, FILL_BYTES // (plan.message_bytes + 64)))
    try:
        for start in range(0, len(items), step):
            _post(publisher, items[start:start + step], tally)
    finally:
        publisher.close()


def churn(host: str, port: int, plan: Plan, count: int, tally: Tally, key: str | None,
          seed: int) -> float:
    """``count`` connections at ``plan.concurrency``, messages flowing; seconds it took."""
    rng, stop = random.Random(seed), gevent.event.Event()
    started = time.monotonic()
    publishing = gevent.spawn(publish, host, port, plan, random.Random(seed + 1), tally, key,
                              stop)
    pool = gevent.pool.Pool(plan.concurrency)
    try:
        for _ in range(count):
            if time.monotonic() - started > plan.seconds:
                break
            pool.spawn(connection, host, port, plan, rng, tally)
        pool.join()
    finally:
        pool.kill()
        stop.set()
        publishing.join(timeout=HEAD_TIMEOUT)
        publishing.kill()
    return time.monotonic() - started


def settle(host: str, port: int, reference: serverstate.State, seconds: float,
           redis_url: str | None, ids: list[str], descriptors: bool) -> serverstate.State:
    """The server's state once all but memory is back to ``reference`` (or after
    ``seconds``: then as it is, and the verdicts say what is left)."""
    deadline = time.monotonic() + seconds
    while True:
        state = serverstate.take(host, port, redis_url, ids)
        checks = serverstate.verdicts(reference, state)[1:]
        if not descriptors:
            checks = [c for c in checks if not c.name.startswith("open descriptors")]
        if all(c.ok for c in checks) or time.monotonic() > deadline:
            return state
        gevent.sleep(SETTLE_STEP)


@dataclass
class Report:
    plan: Plan
    warmup: Tally
    tally: Tally
    seconds: float
    before: serverstate.State
    start: serverstate.State
    end: serverstate.State
    checks: list[serverstate.Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        t, p = self.tally, self.plan
        reached = "" if t.attempted >= p.total else \
            f" (stopped by --for after {t.attempted} of {p.total})"
        out = [f"churn: {t.attempted} connections in {self.seconds:.1f} s{reached}, at most "
               f"{p.concurrency} at a time, over {len(p.ids)} ids",
               "  opened: " + ", ".join(f"{k} {v}" for k, v in sorted(t.opened.items())),
               "  ended by the client: " + ", ".join(f"{k} {v}" for k, v in sorted(t.ends.items()))
               + f"; by the server first: {t.server_ended}",
               "  statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items())),
               "  errors: " + (", ".join(f"{k} {v}" for k, v in t.errors.most_common()) or "none"),
               f"  messages published: {t.published}; failed: {sum(t.publish_failed.values())}"
               f"; bytes read: {t.bytes_in}",
               f"warm-up: {self.warmup.attempted} connections, {self.warmup.published} messages "
               "published (history fill included)"]
        out.append(f"{'reading':<26} {'before':>14} {'start':>14} {'end':>14}")
        for name, get in _ROWS:
            out.append(f"{name:<26} " + " ".join(f"{_shown(get(s)):>14}"
                                                 for s in (self.before, self.start, self.end)))
        out += [c.line() for c in self.checks]
        out.append("verdict: " + ("every check holds" if self.ok else
                                  f"{sum(not c.ok for c in self.checks)} check(s) FAILED"))
        return out

    def as_dict(self) -> dict:
        return {"plan": {**asdict(self.plan), "ids": len(self.plan.ids)},
                "warmup": self.warmup.as_dict(), "churn": self.tally.as_dict(),
                "seconds": round(self.seconds, 1),
                "before": self.before.as_dict(), "start": self.start.as_dict(),
                "end": self.end.as_dict(), "checks": [asdict(c) for c in self.checks],
                "ok": self.ok}


_ROWS = (("resident memory (MiB)", lambda s: round(s.rss_total / 2**20, 1)),
         ("open descriptors", lambda s: sum(v for v in s.fds.values() if v is not None)),
         ("connections to Redis", lambda s: sum(s.redis_fds.values()) if s.redis_fds else None),
         ("connections held", lambda s: s.connections), ("ids in the router", lambda s: s.ids),
         ("timer wheel entries", lambda s: s.timers), ("token timers", lambda s: s.token_timers),
         ("broker subscriptions", lambda s: s.subscribed_ids),
         ("history kept (messages)", lambda s: s.history_kept),
         ("Redis id channels", lambda s: s.redis_channels),
         ("Redis NUMSUB of the ids", lambda s: s.redis_numsub))


def _shown(value) -> str:
    return "-" if value is None else str(value)


def run(url: str, plan: Plan, warmup: int = 500, fill: int = 100, settle_seconds: float = 60.0,
        redis_url: str | None = None, key: str | None = None) -> Report:
    """The whole soak against the server at ``url``: see the module docstring."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    before = serverstate.take(host, port, redis_url, plan.ids)
    warm = Tally()
    if fill:
        fill_history(host, port, plan, fill, key, warm)
    churn(host, port, plan, warmup, warm, key, plan.seed + 1000)
    settle(host, port, before, settle_seconds, redis_url, plan.ids, descriptors=False)
    start = serverstate.take(host, port, redis_url, plan.ids)
    tally = Tally()
    seconds = churn(host, port, plan, plan.total, tally, key, plan.seed)
    end = settle(host, port, start, settle_seconds, redis_url, plan.ids, descriptors=True)
    return Report(plan, warm, tally, seconds, before, start, end,
                  serverstate.verdicts(start, end))


def id_set(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{n}" for n in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flood.churn", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--total", type=int, default=2000,
                   help="connects and disconnects to make (default 2000; the soak: 200000)")
    p.add_argument("--concurrency", type=int, default=100,
                   help="connections at a time at most (default 100)")
    p.add_argument("--transports", default=",".join(PATHS),
                   help=f"comma-separated, of {', '.join(PATHS)} (default all)")
    p.add_argument("--ids", type=int, default=1000, help="ids to spread over (default 1000)")
    p.add_argument("--id-prefix", default="churn-", help="ids are PREFIX1..PREFIXn")
    p.add_argument("--hold", type=float, default=0.5,
                   help="seconds a connection is held at most, a random time (default 0.5)")
    p.add_argument("--rate", type=float, default=200.0, help="messages a second (default 200)")
    p.add_argument("--batch", type=int, default=20,
                   help="messages a POST /send carries; 1: POST /send/<id> (default 20)")
    p.add_argument("--message-bytes", type=int, default=100, help="message size (default 100)")
    p.add_argument("--for", dest="seconds", type=float, default=600.0,
                   help="seconds the churn makes new connections at most (default 600)")
    p.add_argument("--warmup", type=int, default=500,
                   help="connections of the warm-up churn before the start reading (default 500)")
    p.add_argument("--fill-history", type=int, default=100, metavar="N",
                   help="messages per id published in the warm-up: the server's --history "
                        "(default 100; 0: none)")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds to wait for the server to be idle after each churn (default 60)")
    p.add_argument("--redis", help="the server's Redis URL: Redis is asked too (PUBSUB)")
    p.add_argument("--publish-key-file", help="file of the publisher key, if the server needs one")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the report here as JSON too")
    args = p.parse_args(argv)
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    if not transports or set(transports) - set(PATHS):
        p.error(f"--transports: choose from {', '.join(PATHS)}")
    if min(args.total, args.concurrency, args.ids, args.batch, args.message_bytes) < 1 \
            or args.rate <= 0 or args.seconds <= 0 or args.hold < 0 or args.warmup < 0:
        p.error("--total, --concurrency, --ids, --batch, --message-bytes, --rate and --for "
                "must be positive")
    try:
        key = publishkey.client_key(args.publish_key_file)
    except ValueError as exc:
        p.error(str(exc))
    plan = Plan(id_set(args.ids, args.id_prefix), args.total, args.concurrency, transports,
                args.hold, args.rate, args.batch, args.message_bytes, args.seconds, args.seed)
    try:
        report = run(args.url, plan, args.warmup, args.fill_history, args.settle, args.redis, key)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"churn: cannot run against {args.url}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

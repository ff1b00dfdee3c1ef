"""Loading a graph of subscriptions straight into Redis, as the servers would hold it.

A million users following ~15 ids each is 15 million relations: through
``POST /subscribe`` that is a million requests. This loader writes them with
the very script the servers run for a follow (:data:`comet.broker.redisgraph.FOLLOW`),
so both limits hold exactly as there (a subscriber's line is taken whole or
refused whole), pipelined a chunk of subscribers a round trip, on the one node
that holds the ``{graph}`` slot when Redis is a cluster. From the shell::

    python -m comet.graphload --redis redis://localhost:6379/0 graph.txt
    generate-graph | python -m comet.graphload --redis redis://localhost:6379/0 -

Input: a line per subscriber, ``subscriber id id id ...`` separated by
blanks; blank lines and ``#`` comments are skipped. Every id is checked as the
server checks ids (:data:`comet.inputs.ID_PATTERN`); a bad line is reported
by its number and skipped. The input is read a chunk at a time, never whole.

From Python, :func:`follow_many` does the same for a backend's own redis-py
client (a ``Redis`` or a ``RedisCluster``)::

    import redis
    import comet.graphload

    client = redis.Redis.from_url("redis://localhost:6379/0")
    done = comet.graphload.follow_many(client, [("ann", ["bob", "cat"]), ("bob", ["ann"])])
    done.added, done.refused  # relations new; (index, limit, id) of each refused item

This is a module of its own rather than part of :mod:`comet.publish`: it is
the loader's engine (checking lines, chunking, pipelining), which the command
line shares, where :mod:`comet.publish` is about messages. Only
:func:`follow_many`, :class:`Followed` and the command line are the API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import redis
from redis.exceptions import RedisError

from comet.broker import redacted
from comet.broker.redisgraph import FOLLOW, followers_key, following_key
from comet.config import SETTINGS, positive_int
from comet.inputs import ID_PATTERN

#: the key prefix comet's servers use
PREFIX = "comet"
#: subscribers written in one round trip (one pipeline of script calls)
CHUNK = 1000
#: why a line or an item was refused: the limit it is over (as the server's GraphFull)
FOLLOWING = "following"
FOLLOWERS = "followers"


def server_default(name: str) -> int:
    """The server's default for one of its settings (``max_following``, ...)."""
    return next(s.default for s in SETTINGS if s.name == name)


class Followed(NamedTuple):
    """What a load did: ``added`` relations that are new, ``taken`` items written (their
    relations all there now), ``refused`` items as ``(index, limit, id over it)``."""

    added: int
    taken: int
    refused: list[tuple[int, str, str]]


def problem_with(subscriber: str, ids: Sequence[str]) -> str | None:
    """Why ``subscriber`` cannot follow ``ids`` (as ``POST /subscribe`` would refuse it),
    or None."""
    if not ID_PATTERN.fullmatch(subscriber):
        return f"bad subscriber id {subscriber[:40]!r}: 1 to 128 of A-Z a-z 0-9 _ . : -"
    if not ids:
        return "no id to follow"
    for id in ids:
        if not ID_PATTERN.fullmatch(id):
            return f"bad id {id[:40]!r}: 1 to 128 of A-Z a-z 0-9 _ . : -"
        if id == subscriber:
            return f"{subscriber!r} cannot follow itself"
    return None


def follow_many(client, items: Iterable[tuple[str, Sequence[str]]],
                max_following: int | None = None, max_followers: int | None = None,
                prefix: str = PREFIX, chunk: int = CHUNK) -> Followed:
    """Each ``(subscriber, ids)``: the subscriber follows the ids, as ``POST /subscribe``.

    Every item is checked first (ValueError naming its index before anything is
    written); the limits default to the servers' (``--max-following``,
    ``--max-followers``) and are checked by the servers' script, per item, so an
    item over one is refused whole and the others are taken. One round trip per
    ``chunk`` items.
    """
    checked = []
    for index, (subscriber, ids) in enumerate(items):
        ids = list(dict.fromkeys(ids))
        problem = problem_with(subscriber, ids)
        if problem:
            raise ValueError(f"item {index}: {problem}")
        checked.append((subscriber, ids))
    loader = GraphWriter(client, max_following, max_followers, prefix)
    added, taken, refused = 0, 0, []
    for start in range(0, len(checked), chunk):
        done = loader.write(checked[start:start + chunk])
        added += done.added
        taken += done.taken
        refused.extend((start + index, limit, id) for index, limit, id in done.refused)
    return Followed(added, taken, refused)


class GraphWriter:
    """The servers' follow script, pipelined, on the node that holds the graph."""

    def __init__(self, client, max_following: int | None = None,
                 max_followers: int | None = None, prefix: str = PREFIX) -> None:
        self.max_following = max_following or server_default("max_following")
        self.max_followers = max_followers or server_default("max_followers")
        self.prefix = prefix
        self.node = graph_node(client, prefix)
        self.script = self.node.register_script(FOLLOW)

    def write(self, items: Sequence[tuple[str, list[str]]]) -> Followed:
        """Checked, distinct items in one round trip; refused as ``(index, limit, id)``."""
        if not items:
            return Followed(0, 0, [])
        pipe = self.node.pipeline(transaction=False)
        for subscriber, ids in items:
            keys = [following_key(self.prefix, subscriber),
                    *(followers_key(self.prefix, id) for id in ids)]
            self.script(keys=keys, args=[subscriber, self.max_following, self.max_followers,
                                         *ids], client=pipe)
        added, taken, refused = 0, 0, []
        for index, (count, who) in enumerate(pipe.execute()):
            if count == -1:
                refused.append((index, FOLLOWING, items[index][0]))
            elif count == -2:
                refused.append((index, FOLLOWERS, _text(who)))
            else:
                added += int(count)
                taken += 1
        return Followed(added, taken, refused)


def graph_node(client, prefix: str = PREFIX):
    """The plain client of the node that holds the ``{graph}`` slot (the client itself
    on one Redis): every graph key is there, so one pipeline is one round trip."""
    if isinstance(client, redis.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(following_key(prefix, "")))
    return client


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- the command line --------------------------------------------------------------------

#: bytes of one input line at most: a subscriber at --max-following ids of 128 characters
#: fits many times over; a longer line is a bad line, and never held whole
MAX_LINE = 1024 * 1024
#: seconds between two progress lines on stderr
PROGRESS_EVERY = 5.0
#: refused and bad lines named in the summary (the rest are counted)
NAMED = 5


class Tally:
    """What a load has done so far: the summary printed and written with ``--json``."""

    def __init__(self) -> None:
        self.lines = 0
        self.taken = 0
        self.added = 0
        self.refused = 0
        self.bad = 0
        self.refused_first: list[str] = []
        self.bad_first: list[str] = []

    def bad_line(self, number: int, why: str) -> None:
        self.bad += 1
        if len(self.bad_first) < NAMED:
            self.bad_first.append(f"line {number}: {why}")

    def written(self, numbers: Sequence[int], done: Followed) -> None:
        self.taken += done.taken
        self.added += done.added
        self.refused += len(done.refused)
        for index, limit, id in done.refused:
            if len(self.refused_first) < NAMED:
                over = "--max-following" if limit == FOLLOWING else "--max-followers"
                self.refused_first.append(f"line {numbers[index]}: {id!r} is full ({over})")

    def summary(self, seconds: float) -> dict:
        rate = 1 / seconds if seconds > 0 else 0.0
        return {"lines": self.lines, "subscribers": self.taken, "relations_added": self.added,
                "refused": self.refused, "refused_first": self.refused_first,
                "bad_lines": self.bad, "bad_first": self.bad_first,
                "seconds": round(seconds, 3), "lines_per_second": round(self.lines * rate),
                "relations_per_second": round(self.added * rate)}


def parse_line(raw: bytes) -> tuple[str, list[str]] | str | None:
    """One input line: ``(subscriber, distinct ids)``, None for a blank or a comment, or
    why it is bad (a string)."""
    if len(raw) > MAX_LINE:
        return f"longer than {MAX_LINE} bytes"
    try:
        words = raw.decode("ascii").split()
    except UnicodeDecodeError:
        return "not ASCII (ids are A-Z a-z 0-9 _ . : -)"
    if not words or words[0].startswith("#"):
        return None
    subscriber, ids = words[0], list(dict.fromkeys(words[1:]))
    return problem_with(subscriber, ids) or (subscriber, ids)


def read_lines(stream, limit: int = MAX_LINE):
    """``(number, raw line)`` of a binary stream, one at a time; a line over ``limit``
    comes as ``limit + 1`` bytes, the rest of it skipped unread into memory."""
    number = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while True:  # the rest of an overlong line, a piece at a time
                rest = stream.readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
        yield number, raw


def load(stream, writer: GraphWriter, chunk: int = CHUNK, progress=None) -> Tally:
    """Every line of ``stream`` through ``writer``, ``chunk`` subscribers a round trip;
    ``progress(tally)`` is called after each round trip."""
    tally = Tally()
    pending: list[tuple[str, list[str]]] = []
    numbers: list[int] = []
    for number, raw in read_lines(stream):
        tally.lines = number
        parsed = parse_line(raw)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            tally.bad_line(number, parsed)
            continue
        pending.append(parsed)
        numbers.append(number)
        if len(pending) >= chunk:
            tally.written(numbers, writer.write(pending))
            pending, numbers = [], []
            if progress is not None:
                progress(tally)
    tally.written(numbers, writer.write(pending))
    return tally


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m comet.graphload",
        description="Load a graph of subscriptions (a line per subscriber: 'subscriber id "
                    "id ...') straight into the Redis that comet's servers use, with their "
                    "follow script and limits.")
    parser.add_argument("input", nargs="?", default="-",
                        help="the graph file; - (the default) reads stdin")
    parser.add_argument("--redis", default=os.environ.get("COMET_REDIS"),
                        help="Redis URL (default: COMET_REDIS, where a password is best kept)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="the URL names a node of a Redis Cluster")
    parser.add_argument("--max-following", type=positive_int,
                        default=server_default("max_following"),
                        help="ids one subscriber may follow, as the servers' (default %(default)s)")
    parser.add_argument("--max-followers", type=positive_int,
                        default=server_default("max_followers"),
                        help="subscribers one id may have, as the servers' (default %(default)s)")
    parser.add_argument("--prefix", default=PREFIX,
                        help="key prefix (default %(default)s: the servers')")
    parser.add_argument("--chunk", type=positive_int, default=CHUNK,
                        help="subscribers a round trip (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the summary there as JSON")
    return parser


def _connect(url: str, cluster: bool):
    """A client that has answered a PING; raises redis' errors (or ValueError for a bad URL)."""
    if cluster:
        client = redis.RedisCluster.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    else:
        client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    client.ping()
    return client


def _say(text: str) -> None:
    print(f"graphload: {text}", file=sys.stderr, flush=True)


def _report(summary: dict, where: str) -> str:
    lines = [f"{summary['lines']} lines read, {summary['subscribers']} subscribers loaded "
             f"into {where}: {summary['relations_added']} relations added in "
             f"{summary['seconds']:.1f} s ({summary['lines_per_second']} lines/s, "
             f"{summary['relations_per_second']} relations/s)",
             f"{summary['refused']} refused over a limit, nothing of them written"]
    lines += [f"  {named}" for named in summary["refused_first"]]
    lines.append(f"{summary['bad_lines']} bad lines skipped")
    lines += [f"  {named}" for named in summary["bad_first"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 loaded; 1 nothing loaded (no line taken); 2 Redis unreachable or
    lost, or unusable arguments."""
    args = _parser().parse_args(argv)
    if not args.redis:
        _say("no Redis to load into: give --redis URL or COMET_REDIS")
        return 2
    where = redacted(args.redis)
    try:
        client = _connect(args.redis, args.redis_cluster)
        writer = GraphWriter(client, args.max_following, args.max_followers, args.prefix)
    except (RedisError, OSError, ValueError) as exc:
        _say(f"cannot reach Redis at {where}: {exc}")
        return 2
    began = time.monotonic()
    last = [began]

    def progress(tally: Tally) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            _say(f"{tally.lines} lines, {tally.added} relations added, {tally.refused} "
                 f"refused, {tally.bad} bad, {tally.lines / (now - began):.0f} lines/s")

    status = 0
    try:
        with _opened(args.input) as stream:
            tally = load(stream, writer, args.chunk, progress)
    except OSError as exc:
        _say(f"cannot read {args.input}: {exc.strerror or exc}")
        return 2
    except RedisError as exc:
        _say(f"lost Redis at {where}: {exc}")
        return 2
    summary = tally.summary(time.monotonic() - began)
    print(_report(summary, where), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"redis": where, **summary}, file, indent=2)
            file.write("\n")
    if not tally.taken:
        _say("nothing loaded: no line was taken")
        status = 1
    return status


@contextlib.contextmanager
def _opened(path: str):
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as file:
        yield file


if __name__ == "__main__":
    sys.exit(main())

"""The part 3 graph into a server: through its HTTP API, or straight into its Redis.

``flood.msggen --graph N`` draws a friends graph (:mod:`flood.bagraph`) and
puts it where the server reads it before acting for random users:

``api``
    ``POST /subscribe/<user>?to=<id>&to=...`` for every user with followees,
    over keep-alive connections from ``concurrency`` greenlets: works with every
    broker, the in-process one included, and checks the server's limits and
    publisher rules as any backend would meet them.
``redis``
    the users' lines piped into ``python -m comet.graphload -`` (the server's own
    follow script, pipelined): much faster for a million users, for servers
    that run with ``--redis``. It runs as a process because the flood imports
    nothing of comet's server (docs/design.rst); the Redis URL goes to it in
    ``COMET_REDIS``, not on a command line ``ps`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

import gevent
import gevent.queue

from flood.bagraph import FriendsGraph
from flood.publisher import DecodeError, HeadError, Publisher

#: how often a load prints how far it is, seconds
PROGRESS_EVERY = 5.0


def load_through_api(graph: FriendsGraph, host: str, port: int, headers: bytes = b"",
                     concurrency: int = 16, start: int = 1, timeout: float = 10.0,
                     out: Callable[[str], None] = print) -> dict:
    """Every user follows its ids with one ``POST /subscribe`` each; what happened, counted."""
    rows = graph.followed.reshape(-1, graph.m) + start
    first = graph.users - rows.shape[0] + start  # the first m users follow no one
    work: gevent.queue.Queue = gevent.queue.Queue(maxsize=concurrency * 4)
    tally = {"requests": 0, "followed": 0, "statuses": Counter(), "errors": Counter()}

    def subscriber() -> None:
        conn = Publisher(host, port, timeout, headers)
        try:
            while (item := work.get()) is not None:
                user, ids = item
                query = "&".join(f"to={id}" for id in ids)
                try:
                    status, raw = conn.post(f"/subscribe/{user}?{query}", b"")
                    added = int(json.loads(raw)["followed"]) if status == 200 else 0
                except (OSError, HeadError, DecodeError, ValueError, KeyError) as exc:
                    tally["errors"][exc.__class__.__name__] += 1
                    continue
                tally["requests"] += 1
                tally["statuses"][str(status)] += 1
                tally["followed"] += added
        finally:
            conn.close()

    began = time.time()
    workers = [gevent.spawn(subscriber) for _ in range(concurrency)]
    said = began
    for row, ids in enumerate(rows.tolist()):
        work.put((first + row, ids))
        if time.time() - said >= PROGRESS_EVERY:
            said = time.time()
            out(f"load: {row:,}/{len(rows):,} users through the API, "
                f"{row / (said - began):,.0f}/s")
    for _ in workers:
        work.put(None)
    gevent.joinall(workers)
    seconds = time.time() - began
    return {"via": "api", "users": len(rows), "requests": tally["requests"],
            "links_added": tally["followed"], "statuses": dict(tally["statuses"]),
            "errors": dict(tally["errors"]), "seconds": round(seconds, 2),
            "links_per_s": round(tally["followed"] / seconds) if seconds else None}


def load_into_redis(graph: FriendsGraph, redis_url: str, cluster: bool = False,
                    start: int = 1, extra: tuple[str, ...] = ()) -> dict:
    """The graph's lines piped into ``python -m comet.graphload``; its summary, timed."""
    with tempfile.TemporaryDirectory(prefix="flood-graphload-") as tmp:
        summary = os.path.join(tmp, "summary.json")
        command = [sys.executable, "-m", "comet.graphload", "--json", summary, *extra]
        if cluster:
            command.append("--redis-cluster")
        began = time.time()
        loader = subprocess.Popen([*command, "-"], stdin=subprocess.PIPE, text=True,
                                  env={**os.environ, "COMET_REDIS": redis_url})
        try:
            for line in graph.lines(start):
                loader.stdin.write(line)
            loader.stdin.close()
        except BrokenPipeError:
            pass  # it stopped early (Redis unreachable): its exit status says why
        status = loader.wait()
        seconds = time.time() - began
        if status != 0 or not os.path.exists(summary):
            raise RuntimeError(f"comet.graphload failed (exit status {status})")
        with open(summary, encoding="utf-8") as file:
            result = json.load(file)
    return {"via": "redis", "seconds": round(seconds, 2), "graphload": result}

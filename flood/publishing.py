"""bench's per-user phase: ``flood.msggen`` at a rate to random held ids, and what arrived.

Broadcasts say how fast one message reaches everyone; a push server's daily work
is the other shape, many messages each to one user. After the broadcasts,
``--publish-rate R --publish-for S`` runs ``python -m flood.msggen`` (a process of
its own, as a user runs it, so its CPU is not the bench's event loop) against the
server for S seconds, to ids drawn uniformly from the ones the flood holds, and
waits for the flood to have read them. Each message carries its send time, so the
flood's histogram gives publish-to-receive latency; the count it read against
what the server accepted says whether any was lost. A message whose id has no
held stream (a connection closed during the run) is kept in history but reaches
nobody now: the report gives both counts and the closed connections, so the two
can be told apart.

``--social M`` makes the phase the series' part 3 (:func:`along_a_graph`): the
held users follow each other along a Barabási-Albert graph, and msggen
notifies for random users, each notify reaching the user's followers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import gevent

from flood import latency, redisproc
from flood.measure import SAMPLE, Timeline
from flood.procs import Children

#: seconds to wait, after msggen stops, for the last messages to be read
SETTLE = 15.0


def per_user(url: str, timeline: Timeline, children: Children, ids: int, rate: float,
             seconds: float, batch: int, concurrency: int,
             key_file: str | None = None) -> dict:
    """Publish for ``seconds`` at ``rate`` to ids 1..``ids``; sent, received, latency."""
    before = latency.merge([s["hist"] for s in children.snapshots()])
    command = [*_msggen(url, rate, seconds, batch, concurrency, key_file), "--ids", f"1-{ids}"]
    timeline.log(f"bench: publishing {rate:g}/s for {seconds:g} s: {' '.join(command[1:])}")
    sent = _run(command, timeline, children)
    this, total, _ = _settle(timeline, children, before, sent["ok"])
    return {"rate_requested": rate, "seconds": seconds, "batch": batch,
            "concurrency": concurrency, "command": command[1:],
            "sent": sent["sent"], "accepted": sent["ok"], "errors": sent["errors"],
            "error_kinds": sent["error_kinds"], "achieved_rate": sent["achieved_rate"],
            "received": this.get_total_count(),
            "not_received": max(0, sent["ok"] - this.get_total_count()),
            "closed_streams": total["closed"], **latency.describe(this)}


def along_a_graph(url: str, timeline: Timeline, children: Children, users: int, links: int,
                  rate: float, seconds: float, batch: int, concurrency: int,
                  key_file: str | None = None, redis_url: str | None = None) -> dict:
    """The series' part 3: a friends graph of the held users loaded (straight into the
    server's Redis when it has one, else through the API), then notifies for random
    users at ``rate``; what loading took and cost, fan-out, deliveries, latency."""
    graph = ["--graph", str(users), "--links", str(links)]
    memory_before = redisproc.memory(redis_url) if redis_url else None
    command = [sys.executable, "-m", "flood.msggen", "--base", url, *graph,
               "--load", "redis" if redis_url else "api", "--load-only", "--report", "10"]
    timeline.log(f"bench: loading a friends graph: {' '.join(command[1:])}")
    # the Redis URL (it may hold a password) in msggen's environment, not its command line
    loaded = _run(command, timeline, children, "load graph",
                  {**os.environ, "COMET_REDIS": redis_url} if redis_url else None)
    memory_after = redisproc.memory(redis_url) if redis_url else None
    before = latency.merge([s["hist"] for s in children.snapshots()])
    command = [*_msggen(url, rate, seconds, batch, concurrency, key_file), *graph,
               "--load", "none"]
    timeline.log(f"bench: notifying {rate:g}/s for {seconds:g} s: {' '.join(command[1:])}")
    began = time.time()
    sent = _run(command, timeline, children)
    expected = sent.get("subscribers", 0)
    this, total, arrived_at = _settle(timeline, children, before, expected)
    received = this.get_total_count()
    result = {"graph": loaded["graph"], "load": loaded["load"],
              "rate_requested": rate, "seconds": seconds, "batch": batch,
              "concurrency": concurrency, "command": command[1:],
              "notifies": sent["sent"], "accepted": sent["ok"], "errors": sent["errors"],
              "error_kinds": sent["error_kinds"], "notifies_per_s": sent["achieved_rate"],
              "fan_out": sent.get("fan_out"), "deliveries_expected": expected,
              "received": received, "not_received": max(0, expected - received),
              "deliveries_per_s": round(received / (arrived_at - began)) if received else 0,
              "closed_streams": total["closed"], **latency.describe(this)}
    if redis_url:
        result["redis_graph_bytes"] = (memory_after["used_memory"] - memory_before["used_memory"]
                                       if memory_after["used_memory"] is not None
                                       and memory_before["used_memory"] is not None else None)
        result["redis_used_memory_after_load"] = memory_after["used_memory"]
    return result


def _msggen(url: str, rate: float, seconds: float, batch: int, concurrency: int,
            key_file: str | None) -> list[str]:
    command = [sys.executable, "-m", "flood.msggen", "--base", url, "--rate", f"{rate:g}",
               "--duration", f"{seconds:g}", "--batch", str(batch),
               "--concurrency", str(concurrency), "--report", "10"]
    if key_file:  # else msggen reads $COMET_PUBLISH_KEY_FOR_CLIENT, inherited
        command += ["--publish-key-file", key_file]
    return command


def _run(command: list[str], timeline: Timeline, children: Children,
         phase: str = "publish", env: dict | None = None) -> dict:
    """flood.msggen as a process, the timeline sampled meanwhile; its ``--json`` result."""
    fd, out = tempfile.mkstemp(prefix="bench-msggen-", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.Popen([*command, "--json", out], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                gevent.sleep(SAMPLE)
                timeline.show(phase, timeline.sample(children), 0)
        finally:
            if proc.poll() is None:  # the bench is stopping (Ctrl-C, a failure)
                proc.terminate()
                proc.wait(timeout=10)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        try:
            with open(out) as fh:
                return json.load(fh)["result"]
        except (OSError, ValueError, KeyError):
            raise SystemExit(f"bench: flood.msggen wrote no result (exit {proc.returncode}):"
                             f"\n{output[-2000:]}") from None
    finally:
        os.unlink(out)


def _settle(timeline: Timeline, children: Children, before, expected: int) -> tuple:
    """Wait (at most :data:`SETTLE` s) until the flood has read ``expected`` messages more:
    the histogram of those, the last sample, and when the count stopped growing."""
    deadline = time.time() + SETTLE
    last, arrived_at = -1, time.time()
    while True:
        total = timeline.sample(children)
        arrived = total["latency"]["count"] - before.get_total_count()
        if arrived != last:
            last, arrived_at = arrived, time.time()
        if arrived >= expected or time.time() >= deadline:
            break
        gevent.sleep(SAMPLE)
    this = latency.since(latency.merge([s["hist"] for s in children.snapshots()]), before)
    return this, total, arrived_at

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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import gevent

from flood import latency
from flood.measure import SAMPLE, Timeline
from flood.procs import Children

#: seconds to wait, after msggen stops, for the last messages to be read
SETTLE = 15.0


def per_user(url: str, timeline: Timeline, children: Children, ids: int, rate: float,
             seconds: float, batch: int, concurrency: int,
             key_file: str | None = None) -> dict:
    """Publish for ``seconds`` at ``rate`` to ids 1..``ids``; sent, received, latency."""
    before = latency.merge([s["hist"] for s in children.snapshots()])
    fd, out = tempfile.mkstemp(prefix="bench-msggen-", suffix=".json")
    os.close(fd)
    command = [sys.executable, "-m", "flood.msggen", "--base", url, "--ids", f"1-{ids}",
               "--rate", f"{rate:g}", "--duration", f"{seconds:g}", "--batch", str(batch),
               "--concurrency", str(concurrency), "--report", "10", "--json", out]
    if key_file:  # else msggen reads $COMET_PUBLISH_KEY_FOR_CLIENT, inherited
        command += ["--publish-key-file", key_file]
    timeline.log(f"bench: publishing {rate:g}/s for {seconds:g} s: {' '.join(command[1:])}")
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                gevent.sleep(SAMPLE)
                timeline.show("publish", timeline.sample(children), 0)
        finally:
            if proc.poll() is None:  # the bench is stopping (Ctrl-C, a failure)
                proc.terminate()
                proc.wait(timeout=10)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        try:
            with open(out) as fh:
                sent = json.load(fh)["result"]
        except (OSError, ValueError, KeyError):
            raise SystemExit(f"bench: flood.msggen wrote no result (exit {proc.returncode}):"
                             f"\n{output[-2000:]}") from None
    finally:
        os.unlink(out)
    deadline = time.time() + SETTLE
    while True:
        total = timeline.sample(children)
        arrived = total["latency"]["count"] - before.get_total_count()
        if arrived >= sent["ok"] or time.time() >= deadline:
            break
        gevent.sleep(SAMPLE)
    this = latency.since(latency.merge([s["hist"] for s in children.snapshots()]), before)
    return {"rate_requested": rate, "seconds": seconds, "batch": batch,
            "concurrency": concurrency, "command": command[1:],
            "sent": sent["sent"], "accepted": sent["ok"], "errors": sent["errors"],
            "error_kinds": sent["error_kinds"], "achieved_rate": sent["achieved_rate"],
            "received": this.get_total_count(),
            "not_received": max(0, sent["ok"] - this.get_total_count()),
            "closed_streams": total["closed"], **latency.describe(this)}


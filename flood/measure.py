"""The measurements of a bench run, taken while the flood holds its connections.

Memory before and after (DESIGN.md's method, :mod:`flood.memory`), the timed
broadcast fan-out, ``--unread`` filling every socket buffer, ``--churn`` (the
clients leave and the server should give its memory back), and the
per-connection figures made from them. Each step returns the JSON fragment it
adds; the order of the steps belongs to :class:`flood.bench.Bench`.
"""

from __future__ import annotations

import statistics
import time

import gevent
import requests

from flood import latency, memory, stats
from flood.procs import Children
from flood.target import Target
from flood.timeline import Timeline


def snapshot(target: Target, timeline: Timeline) -> dict:
    """Server and kernel memory at one moment, with /stats to say what the server held."""
    return {"server": memory.process_memory(target.pids), "kernel": memory.kernel(),
            "server_stats": target.stats(), "t": timeline.elapsed()}


def fanout(target: Target, timeline: Timeline, children: Children, expected: int,
           broadcasts: int, timeout: float) -> dict:
    """``--broadcasts`` timed broadcasts, one after another; the median and each."""
    runs = []
    for _ in range(broadcasts):
        runs.append(broadcast(target, timeline, children, expected, timeout))
        gevent.sleep(0.2)
    merged = latency.merge([s["hist"] for s in children.snapshots()])
    times = [r["all_received_ms"] for r in runs]
    done = sorted(t for t in times if t is not None)
    first = runs[0]
    return {"answer": first["answer"], "answer_s": first["answer_s"], "expected": expected,
            "received": first["received"], **latency.describe(merged),
            "all_received_ms": statistics.median(done) if len(done) == len(runs) else None,
            "all_received_ms_each": times,
            "deliveries_per_s": first["deliveries_per_s"],
            "broadcasts": runs, "buckets": latency.buckets(merged)}


def broadcast(target: Target, timeline: Timeline, children: Children, expected: int,
              timeout: float) -> dict:
    """POST /broadcast with a timestamp; wait until every held stream has it."""
    before = latency.merge([s["hist"] for s in children.snapshots()])
    count0 = before.get_total_count()
    body = latency.stamp("bench broadcast").encode()
    sent = time.time()
    try:
        answer = target.post("/broadcast", body, timeout=timeout).json()
    except (requests.RequestException, ValueError) as exc:
        answer = {"error": str(exc)}
    answered = time.time() - sent
    deadline = sent + timeout
    while time.time() < deadline:
        total = timeline.sample(children)
        if total["latency"]["count"] - count0 >= min(expected, total["active"]):
            break  # everyone still connected has it
        gevent.sleep(0.05)
    this = latency.since(latency.merge([s["hist"] for s in children.snapshots()]), before)
    figures = latency.describe(this)
    span = figures["max_ms"]
    return {"answer": answer, "answer_s": round(answered, 3), "received": figures["count"],
            **figures,
            "all_received_ms": span if figures["count"] >= expected else None,
            "deliveries_per_s": (round(figures["count"] / (span / 1000), 1)
                                 if span else None)}


def fill(target: Target, unread_bytes: int) -> dict:
    """--unread: send every connection --unread-bytes in 8 KiB broadcasts nobody reads."""
    size = min(8192, unread_bytes)
    sent, answers = 0, []
    while sent < unread_bytes:
        body = latency.stamp("unread " + "x" * size)[:size].encode()
        answers.append(target.post("/broadcast", body).json())
        sent += len(body)
    return {"bytes_per_connection": sent, "broadcasts": len(answers),
            "delivered": [a.get("delivered") for a in answers]}


def churn(target: Target, children: Children, before: dict, timeout: float) -> dict:
    """The clients leave; wait until the server holds nothing, then compare its RSS."""
    left = time.time()
    children.stop()
    children.wait(timeout=30)
    stats_now = None
    while time.time() < left + timeout:
        stats_now = target.stats()
        if stats_now and stats_now["connections"]["total"] == 0 \
                and stats_now.get("timers") == 0:
            break
        gevent.sleep(0.25)
    emptied = time.time() - left
    target.wait_idle()
    after = memory.process_memory(target.pids)
    rb = before["server"]["rss_bytes"]
    return {"empty": bool(stats_now and stats_now["connections"]["total"] == 0
                          and stats_now.get("timers") == 0),
            "empty_after_s": round(emptied, 3), "stats": stats_now,
            "rss_before": rb, "rss_after": after["rss_bytes"],
            "pss_after": after["pss_bytes"],
            "rss_percent": round(100.0 * after["rss_bytes"] / rb, 2) if rb else None}


def figures(before: dict, after: dict, ready: dict, ramp: dict, held: dict,
            fan: dict | None, server_pids: list[int], client_procs: int) -> dict:
    """What one held connection costs: each growth divided by the connections still held."""
    n = held["active"] or 1
    sb, sa = before["server"], after["server"]
    kb, ka = before["kernel"], after["kernel"]
    return {
        "held": held["active"], "closed": held["closed"], "closed_reasons": held["reasons"],
        "accept_rate_per_s": stats.accept_rate(ramp),
        "ramp_s": ramp["last_connect"] - ramp["first_connect"] if ramp["connected"] else None,
        "server_pids": server_pids, "server_processes": sa["processes"],
        "server_rss_before": sb["rss_bytes"], "server_rss_after": sa["rss_bytes"],
        "server_kb_per_conn": (sa["rss_bytes"] - sb["rss_bytes"]) / n / 1024,
        "server_pss_before": sb["pss_bytes"], "server_pss_after": sa["pss_bytes"],
        "server_pss_kb_per_conn": (sa["pss_bytes"] - sb["pss_bytes"]) / n / 1024,
        "slab_before": kb["slab_bytes"], "slab_after": ka["slab_bytes"],
        "slab_kb_per_conn": (ka["slab_bytes"] - kb["slab_bytes"]) / n / 1024,
        "tcp_mem_pages_before": kb["tcp_mem_pages"], "tcp_mem_pages_after": ka["tcp_mem_pages"],
        "tcp_mem_kb_per_conn": ((ka["tcp_mem_pages"] or 0) - (kb["tcp_mem_pages"] or 0))
        * memory.PAGE / n / 1024,
        "tcp_inuse_before": kb["tcp_inuse"], "tcp_inuse_after": ka["tcp_inuse"],
        "client_processes": client_procs,
        "client_rss_before": ready["rss_bytes"], "client_rss_after": held["rss_bytes"],
        "client_kb_per_conn": (held["rss_bytes"] - ready["rss_bytes"]) / n / 1024,
        "server_stats_after": after["server_stats"],
        "fanout": fan,
    }

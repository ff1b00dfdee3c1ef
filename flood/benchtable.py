"""What ``python -m flood.bench`` prints: the progress line, one run's figures as rows,
several runs (``--modes``) side by side, and the one-page summary beside the JSON.

Pure formatting, no I/O: of the samples :class:`flood.measure.Timeline` takes and of the
JSON document :class:`flood.bench.Bench` builds. The JSON keeps every figure unrounded.
"""

from __future__ import annotations

import os

from flood.progress import duration

MB = 1e6


GIB = 1024 ** 3


def progress(phase: str, total: dict, connections: int, rate: float, row: dict,
             eta: float | None = None) -> str:
    """The live line while ramping and holding: the flood's ``total``, the latest ``row``,
    and while ramping the time left at the pace so far."""
    left = f", ETA {duration(eta)}" if eta is not None else ""
    return (f"{phase}: {total['active']}/{connections} active, "
            f"{total['closed']} closed, {rate:.0f} conn/s{left}, server RSS "
            f"{row['server_rss_bytes'] / MB:.1f} MB, "
            f"CPU {row['server_cpu_percent']:.0f}%")


def publishing_line(p: dict) -> str:
    """bench's per-user phase in one line: rate, what arrived, latency."""
    lat = (f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms"
           if p["count"] else "no latency samples")
    return (f"{p['accepted']:,} accepted of {p['sent']:,} at {p['achieved_rate']:,.0f}/s "
            f"(batch {p['batch']}), {p['received']:,} received, {p['not_received']:,} not "
            f"({p['closed_streams']:,} streams closed); {lat}")


def social_lines(p: dict) -> list[tuple[str, str]]:
    """bench's part 3 phase: the graph, its load, and the notifies along it."""
    g, load, fan = p["graph"], p["load"], p.get("fan_out") or {}
    lat = (f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms"
           if p["count"] else "no latency samples")
    redis = (f", Redis +{p['redis_graph_bytes'] / 2**20:,.1f} MiB"
             if p.get("redis_graph_bytes") is not None else "")
    spread = ", ".join(f"{k} {fan[k]:,}" for k in ("p50", "p99", "max") if k in fan)
    return [
        ("friends graph", f"{g['users']:,} users, m {g['m']}, {g['links']:,} links; followers "
                          f"median {g['followers_p50']}, p99 {g['followers_p99']}, "
                          f"max {g['followers_max']:,}"),
        ("graph load", f"{load['via']} in {load['seconds']:.1f} s{redis}"),
        ("notifies", f"{p['accepted']:,} accepted of {p['notifies']:,} at "
                     f"{p['notifies_per_s']:,.0f}/s (batch {p['batch']}); fan-out mean "
                     f"{fan.get('mean')}" + (f" ({spread})" if spread else "")),
        ("deliveries", f"{p['received']:,} of {p['deliveries_expected']:,} at "
                       f"{p['deliveries_per_s']:,}/s ({p['closed_streams']:,} streams "
                       f"closed); {lat}"),
    ]


def tcp_events(during: dict) -> str:
    """The kernel's TCP counters that moved during the ramp and hold (machine-wide)."""
    moved = [f"{name} {count:,}" for name, count in during.items() if count]
    return ", ".join(moved) if moved else "none"


def rows(r: dict) -> list[tuple[str, str]]:
    """(figure, value) for one run."""
    rate = r["accept_rate_per_s"]
    out = [
        ("transport / server args", f"{r.get('transport', 'stream')} / "
                                    f"{r.get('server_args') or '(defaults)'}"),
        ("connections requested", f"{r['connections_requested']} at {r['rate_requested']:g}/s"),
        ("held", f"{r['held']}"),
        ("closed", f"{r['closed']} {r['closed_reasons'] or ''}".strip()),
        ("kernel TCP events", tcp_events(r.get("tcp_counters_during") or {})),
        ("accept rate", f"{rate:.0f} conn/s over {r['ramp_s']:.2f} s" if rate else "-"),
        ("server RSS", f"{r['server_rss_before'] / MB:.1f} -> {r['server_rss_after'] / MB:.1f} MB"
                       f" = {r['server_kb_per_conn']:.2f} KB/conn"
                       f" ({_processes(r['server_processes'])})"),
        ("server PSS", f"{r['server_pss_before'] / MB:.1f} -> {r['server_pss_after'] / MB:.1f} MB"
                       f" = {r['server_pss_kb_per_conn']:.2f} KB/conn"
                       f" (anonymous pages: {_num(r.get('server_pss_anon_kb_per_conn'))})"),
        *process_rows(r),
        *redis_rows(r),
        ("kernel slab", f"{(r['slab_after'] - r['slab_before']) / MB:+.1f} MB"
                        f" = {r['slab_kb_per_conn']:.2f} KB/conn (both loopback ends)"),
        ("kernel TCP mem", f"{r['tcp_mem_pages_before']} -> {r['tcp_mem_pages_after']} pages"
                           f" = {r['tcp_mem_kb_per_conn']:.2f} KB/conn"),
        ("flood client RSS", f"{r['client_rss_before'] / MB:.1f} -> "
                             f"{r['client_rss_after'] / MB:.1f} MB"
                             f" = {r['client_kb_per_conn']:.2f} KB/conn"
                             f" ({r['client_processes']} process(es))"),
    ]
    if r.get("unread"):
        u = r["unread"]
        out.append(("unread data sent", f"{u['bytes_per_connection']} B/conn in "
                                        f"{u['broadcasts']} broadcasts, not read"))
    else:
        out.append(("broadcast fan-out", fanout_text(r["fanout"])))
        each = r["fanout"].get("all_received_ms_each") or []
        if len(each) > 1:
            out.append(("each broadcast, all in", ", ".join(
                "-" if t is None else f"{t:.0f}" for t in each) + " ms"))
    if r.get("whole"):
        w = r["whole"]
        error = w["model_error_percent"]
        fell = w.get("available_fell_bytes")
        out.append(("whole run's memory", f"{w['used_bytes'] / GIB:.2f} GiB at most "
                                          "(MemTotal - MemFree - Buffers - Cached, from before "
                                          f"it); the model said {w['predicted_bytes'] / GIB:.2f} "
                                          "GiB" + ("" if error is None else f" ({error:+.1f}%)")
                                          + ("" if fell is None else
                                             f"; MemAvailable fell {fell / GIB:.2f} GiB")))
    if r.get("per_user"):
        out.append(("per-user messages", publishing_line(r["per_user"])))
    if r.get("social"):
        out.extend(social_lines(r["social"]))
    if r.get("churn"):
        c = r["churn"]
        out.append(("after churn", (f"empty in {c['empty_after_s']:.1f} s" if c["empty"]
                                    else f"NOT empty: {c['stats']}")
                    + f", RSS {c['rss_before'] / MB:.1f} -> {c['rss_after'] / MB:.1f} MB"
                    f" = {c['rss_percent']:.1f} % of before"))
    out.append(("tcp_rmem / tcp_wmem", f"{' '.join(r['tcp']['tcp_rmem'] or [])} / "
                                       f"{' '.join(r['tcp']['tcp_wmem'] or [])}"))
    if r["tcp"].get("ehash_buckets"):
        whose = "--netns: a namespace of its own" if r.get("netns") else "the host's"
        out.append(("TCP established hash", f"{r['tcp']['ehash_buckets']:,} buckets ({whose})"))
    return out


def table(r: dict) -> list[str]:
    """The human answer for one run."""
    pairs = rows(r)
    width = max(len(k) for k, _ in pairs)
    return [f"{k:<{width}}  {v}" for k, v in pairs]


def side_by_side(runs: dict[str, dict]) -> list[str]:
    """Several runs (``--modes on,off``) as columns, one figure a line."""
    columns = {name: dict(rows(r)) for name, r in runs.items()}
    keys = [k for k, _ in rows(next(iter(runs.values())))]
    for col in columns.values():
        keys += [k for k in col if k not in keys]
    width = max(len(k) for k in keys)
    lines = [f"{'':<{width}}  " + " | ".join(f"--hibernate {n}" for n in columns)]
    for key in keys:
        lines.append(f"{key:<{width}}  " + " | ".join(col.get(key, "-")
                                                      for col in columns.values()))
    return lines


def summary_page(doc: dict, json_path: str) -> str:
    """The one-page Markdown summary written beside the JSON (``run.json``: ``run.md``):
    what was measured, the command, the figures of :func:`rows`, the PNG.

    For a person reading a results folder later; the JSON keeps every figure.
    """
    runs = doc["modes"] if "modes" in doc else {"": doc}
    first = next(iter(runs.values()))
    held = " / ".join(f"{r['held']:,}" for r in runs.values())
    lines = [f"# comet bench: {held} connections held, {doc['date']}", "",
             "## What it measured", "",
             f"{first['connections_requested']:,} {first.get('transport', 'stream')} "
             f"connections opened at {first['rate_requested']:g}/s against "
             f"{first.get('target', 'the server')} (server arguments: "
             f"{first.get('server_args') or 'the defaults'}), held, and the memory of the "
             "server, the kernel and the flood read before and after (docs/design.rst, "
             "\"How memory per connection is measured\"); "
             + ("then unread data sent to fill the socket buffers." if first.get("unread")
                else "then broadcasts timed until every held stream had them.")
             + (" Once per --hibernate mode, side by side." if "modes" in doc else ""), "",
             "## The command", "", "```", "python -m " + " ".join(doc["command"]), "```", "",
             "## The figures", ""]
    columns = {name: dict(rows(r)) for name, r in runs.items()}
    keys = list(dict.fromkeys(k for col in columns.values() for k in col))
    names = [f"--hibernate {n}" if n else "value" for n in columns]
    lines += ["| figure | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_cell(col.get(key, "-"))
                                               for col in columns.values()) + " |")
    here = os.path.dirname(os.path.abspath(json_path))
    lines += ["", "Every figure, unrounded, and the time series: "
              f"`{os.path.basename(json_path)}`."]
    for name, r in runs.items():
        if r.get("plot"):
            plot = os.path.relpath(os.path.abspath(r["plot"]), here)
            lines += ["", f"![{f'--hibernate {name}' if name else 'the run'}]({plot})"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fanout_text(fan: dict) -> str:
    if not fan.get("count"):
        return f"nothing received (answer {fan.get('answer')})"
    n = len(fan.get("broadcasts") or [1])
    what = "median of " + str(n) + ": " if n > 1 else ""
    done = (f"{what}all {fan['expected']} in {fan['all_received_ms']:.0f} ms"
            if fan["all_received_ms"] is not None
            else f"{fan['received']} of {fan['expected']} received")
    return (f"{done}: p50 {fan['p50_ms']:.1f} ms, p99 {fan['p99_ms']:.1f} ms, "
            f"max {fan['max_ms']:.1f} ms, {fan['deliveries_per_s'] or 0:.0f} deliveries/s")


def process_rows(r: dict) -> list[tuple[str, str]]:
    """Each server process's PSS with the connections held, when there are several."""
    parts = r.get("server_by_process_after") or []
    if len(parts) < 2:
        return []
    head, rest = parts[0], parts[1:]
    master = "master" in (r.get("server_stats_after") or {}) or (r.get("workers") or 1) > 1
    text = (f"{'master' if master else 'server'} {head['pid']} {head['pss_bytes'] / MB:.1f} MB; "
            + ("workers " if master else "children ")
            + ", ".join(f"{p['pid']} {p['pss_bytes'] / MB:.1f}" for p in rest) + " MB")
    return [("server PSS, each process", text)]


def redis_rows(r: dict) -> list[tuple[str, str]]:
    """Redis's growth, when the server uses one: the broker's share of a connection."""
    if not r.get("redis_url"):
        return []
    where = (f"pid {r['redis_pid']}, started by bench" if r.get("redis_started")
             else f"{r['redis_rss_from']} of {r['redis_url']}")
    per_id = r.get("redis_bytes_per_id")
    rows = [
        ("Redis RSS", f"{_mb(r['redis_rss_before'])} -> {_mb(r['redis_rss_after'])} MB"
                      f" = {_num(r['redis_kb_per_conn'])} KB/conn ({where})"),
        ("Redis used_memory", f"{_mb(r['redis_used_memory_before'])} -> "
                              f"{_mb(r['redis_used_memory_after'])} MB = "
                              f"{'-' if per_id is None else f'{per_id:.0f}'} B per subscribed id"
                              f" ({r.get('redis_ids')} ids)"),
        ("server + Redis userland", f"{_num(r['server_redis_kb_per_conn'])} KB/conn"
                                    " (server PSS + Redis RSS growth)"),
    ]
    if r.get("redis_errors"):
        rows.append(("Redis errors", "; ".join(r["redis_errors"])))
    return rows


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _processes(count: int) -> str:
    if count < 2:
        return f"{count} process"
    return f"{count} processes: pages they share counted in each, PSS splits them"

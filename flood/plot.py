"""bench's PNG: connections and ramp rate, memory by component over time, the fan-out histogram.

matplotlib (the ``plot`` extra) is imported here only, and with the Agg backend, so
bench runs on a machine without a display and without matplotlib if ``--plot`` is off.
"""

from __future__ import annotations

GB = 1e9

#: The memory panel's stacked parts: (series field, label, colour). Together they are what
#: the experiment holds; MemAvailable, drawn as a line over them, is what is left.
COMPONENTS = (
    ("server_pss_bytes", "comet workers (PSS)", "tab:green"),
    ("client_rss_bytes", "flood (RSS)", "tab:orange"),
    ("redis_rss_bytes", "Redis (RSS)", "tab:red"),
    ("slab_bytes", "kernel slab", "tab:gray"),
    ("tcp_mem_bytes", "TCP buffers", "tab:purple"),
)


def write_plot(path: str, series: list[dict], fanout_buckets: list[tuple[float, int]],
               title: str) -> None:
    """Three panels: connections held and ramp rate, memory by component, broadcast latency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 12))
    t = [row["t"] for row in series]
    top.plot(t, [row["active"] for row in series], label="connections held", color="tab:blue")
    top.plot(t, [row["closed"] for row in series], label="closed", color="tab:red")
    top.set_xlabel("seconds")
    top.set_ylabel("connections")
    rate = top.twinx()
    rate.plot(t, [row.get("ramp_per_s") or 0 for row in series], label="ramp rate",
              color="tab:cyan", linewidth=0.8)
    rate.set_ylabel("new connections/s (last second)")
    lines = top.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    top.set_title(title)

    parts = [(label, colour, [(row.get(field) or 0) / GB for row in series])
             for field, label, colour in COMPONENTS]
    middle.stackplot(t, *[values for _, _, values in parts], labels=[p[0] for p in parts],
                     colors=[p[1] for p in parts], alpha=0.8)
    middle.plot(t, [(row.get("mem_available_bytes") or 0) / GB for row in series],
                label="free (MemAvailable)", color="black", linewidth=1)
    middle.set_xlabel("seconds")
    middle.set_ylabel("GB")
    middle.set_title("memory by component")
    middle.legend(loc="upper left", fontsize="small")

    if fanout_buckets:
        ms = [b[0] for b in fanout_buckets]
        counts = [b[1] for b in fanout_buckets]
        width = max((max(ms) - min(ms)) / 60, 0.01)
        bottom.bar(ms, counts, width=width, color="tab:purple")
    bottom.set_xlabel("broadcast delivery latency (ms)")
    bottom.set_ylabel("deliveries")
    bottom.set_title("broadcast fan-out")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""bench's PNG: active connections and server RSS over time, and the fan-out latency histogram.

matplotlib (the ``plot`` extra) is imported here only, and with the Agg backend, so
bench runs on a machine without a display and without matplotlib if ``--plot`` is off.
"""

from __future__ import annotations


def write_plot(path: str, series: list[dict], fanout_buckets: list[tuple[float, int]],
               title: str) -> None:
    """Two panels: the ramp and hold (connections, server MB), the broadcast latency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8))
    t = [row["t"] for row in series]
    top.plot(t, [row["active"] for row in series], label="active connections", color="tab:blue")
    top.plot(t, [row["closed"] for row in series], label="closed", color="tab:red")
    top.set_xlabel("seconds")
    top.set_ylabel("connections")
    rss = top.twinx()
    rss.plot(t, [row["server_rss_bytes"] / 1e6 for row in series], label="server RSS",
             color="tab:green")
    rss.set_ylabel("server RSS (MB)")
    lines = top.get_legend_handles_labels()
    more = rss.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    top.set_title(title)

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

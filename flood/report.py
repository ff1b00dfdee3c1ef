"""What the flood tells the operator: the periodic stats lines, the summary, the ``--json`` file.

It receives already-summed snapshots (see :func:`flood.stats.sum_snapshots`) and
neither counts nor connects. The JSON file holds the time series and the summary
so bench and plots can be made from a run after the fact.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from flood import latency, stats


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Reporter:
    """Prints ``Stats:`` (and ``Latency:``) lines and keeps the series for the JSON file."""

    def __init__(self, out: Callable[[str], None] = _print) -> None:
        self.out = out
        self.started = time.time()
        self.series: list[dict] = []

    def tick(self, total: dict) -> None:
        self.out(stats.stats_line(total))
        line = latency.latency_line(total["latency"])
        if line:
            self.out(line)
        self.series.append({
            "t": round(total["t"] - self.started, 3),
            "active": total["active"], "closed": total["closed"], "chunks": total["chunks"],
            "attempted": total["attempted"], "pending": total["pending"],
            "client_rss_bytes": total["rss_bytes"], "latency": total["latency"],
        })

    def summary(self, total: dict) -> dict:
        """Print the final lines and return the summary the JSON file carries."""
        elapsed = time.time() - self.started
        self.out(stats.stats_line(total))
        for line in stats.summary_lines(total, elapsed):
            self.out(line)
        return {
            "elapsed_s": round(elapsed, 3),
            "attempted": total["attempted"], "connected": total["connected"],
            "active_at_end": total["active"], "closed": total["closed"],
            "chunks": total["chunks"], "peak_active": total["peak_active"],
            "accept_rate_per_s": stats.accept_rate(total),
            "ramp_s": (total["last_connect"] - total["first_connect"]
                       if total["connected"] else None),
            "client_rss_bytes": total["rss_bytes"],
            "client_rss_ready_bytes": total["rss_ready_bytes"],
            "client_kb_per_conn": stats.client_kb_per_conn(total),
            "closed_reasons": total["reasons"], "latency": total["latency"],
        }


def write_json(path: str, doc: dict) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    tmp = path + ".json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)

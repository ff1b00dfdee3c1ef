"""The million run's figures as ``flood.bench --json`` wrote them (the fields the capacity
model reads): 998,466 /test/ streams held by 56 workers over Redis, 51 flood processes,
Mon Nov 30 2026 on this machine (docs/benchmarks.rst, "More source addresses")."""

from __future__ import annotations

MILLION = {
    "transport": "stream",
    "connections_requested": 1000000,
    "held": 998466,
    "workers": 56,
    "server_processes": 57,
    "client_processes": 51,
    "server_kb_per_conn": 0.40851866763615385,
    "server_pss_kb_per_conn": 0.42827297073711074,
    "server_pss_before": 680913920,
    "server_pss_after": 1118792704,
    "redis_kb_per_conn": 0.2217922292797151,
    "redis_bytes_per_id": 221.688623606055,
    "redis_rss_before": 16146432,
    "redis_rss_after": 242913280,
    "client_kb_per_conn": 0.3194660609374781,
    "client_rss_before": 6728237056,
    "client_rss_after": 7054868480,
    "slab_kb_per_conn": 9.998201240703239,
    "slab_before": 308776960,
    "slab_after": 10531229696,
    "tcp_mem_kb_per_conn": -8.012290854170296e-06,
}

#: What that run grew in all, in bytes: server PSS, Redis RSS, flood RSS, kernel slab.
MILLION_GREW = sum(MILLION[f"{k}_after"] - MILLION[f"{k}_before"]
                   for k in ("server_pss", "redis_rss", "client_rss", "slab"))

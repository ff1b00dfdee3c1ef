"""``GET /metrics``: the figures of ``/stats`` in Prometheus's text format.

Nothing is counted here. A scrape asks for the same snapshot ``/stats``
answers with (one process's hub, or with ``--workers`` or under gunicorn
with comet's worker the whole server's sums, gathered by
:class:`comet.siblings.Siblings` from every worker), and
:class:`SnapshotCollector` turns it into prometheus_client metric families,
which prometheus_client writes out (the text format, or OpenMetrics when the
scraper asks for it). So the hot path pays for no metric of its own, and
``/metrics`` and ``/stats`` can never disagree about a figure.

Names follow Prometheus's conventions: ``comet_`` first, counters ending in
``_total``, base units (bytes, seconds), labels of a few fixed values
(transport, reason, path); never an id, a peer or a key as a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from comet.latency import SAMPLE_PERIOD
from comet.stats import PUBLISH_PATHS, ROOM_REFUSALS, TRANSPORTS

#: resume results, always shown (a series that appears only on its first event hides rates)
RESUME_RESULTS = ("recovered", "missed")

#: broker counters (key in the broker's snapshot, metric name, help), where it keeps them
BROKER_COUNTERS = (
    ("reconnects", "comet_broker_reconnects", "times the broker's pub/sub link came back"),
    ("resubscribed_ids", "comet_broker_resubscribed_ids",
     "ids subscribed again after the link came back"),
    ("gap_messages", "comet_broker_gap_messages",
     "messages replayed from history after the link came back"),
    ("gap_lost_ids", "comet_broker_gap_lost_ids",
     "ids whose history no longer covered what the link missed (their connections resume)"),
    ("publish_failures", "comet_broker_publish_failures",
     "publishes the broker could not make (answered 503)"),
)


class SnapshotCollector:
    """A prometheus_client collector reading a ``/stats`` snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot())


def exposition(snapshot: Callable[[], dict], accept: str | None) -> tuple[bytes, str]:
    """The body and content type of one scrape, in the format ``accept`` asks for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


def families(s: dict) -> Iterator[Metric]:
    """Every metric family of a ``/stats`` snapshot (one process's, or the sums)."""
    yield from _connections(s)
    yield from _messages(s)
    yield from _refusals(s)
    yield from _broker(s)
    yield from _process(s)


def _connections(s: dict) -> Iterator[Metric]:
    held = s.get("connections", {})
    yield _gauge("comet_connections", "connections held now, by transport",
                 {("transport",): {(t,): held.get(t, 0) for t in TRANSPORTS}})
    yield _gauge("comet_ids", "ids logged in (with workers: once per worker holding the id)",
                 s.get("ids", 0))
    yield _counter("comet_connections_accepted", "connections admitted", s.get("accepted", 0))
    yield _by("comet_connections_ended", "connections closed, by why they ended",
              "reason", s.get("ends", {}))
    yield _by("comet_resumes", "logins that resumed from a position (Last-Event-ID, a "
              "long-poll's since), by whether history covered the gap", "result",
              {r: s.get("resumes", {}).get(r, 0) for r in RESUME_RESULTS})
    yield _by("comet_drops", "connections the server gave up on, by reason", "reason",
              s.get("drops", {}))


def _messages(s: dict) -> Iterator[Metric]:
    published = s.get("published", {})
    yield _by("comet_messages_published", "messages published through this server, by "
              "path: send (POST /send/<id>), batch (lines of POST /send), broadcast, notify (one "
              "per subscriber of POST /notify/<id> and of each line of POST /notify)", "path",
              {p: published.get(p, 0) for p in PUBLISH_PATHS})
    messages = s.get("messages", {})
    deliveries = s.get("deliveries", {})
    yield _by("comet_deliveries", "messages written or queued to connections (one "
              "message to three connections: three), by the connection's transport",
              "transport", {t: deliveries.get(t, 0) for t in {*TRANSPORTS, *deliveries}})
    yield _counter("comet_messages_dropped", "messages lost with dropped connections",
                   messages.get("dropped", 0))
    yield from _histogram("comet_broadcast_fanout_seconds", "time a process took to hand "
                          "one broadcast to all its connections (with workers: one "
                          "observation per worker per broadcast)", s.get("fanout_seconds"))
    yield from _histogram(
        "comet_publish_to_socket_seconds", "sampled, at most one fan-out per process "
        f"every {SAMPLE_PERIOD:g} s: seconds from a message's publish (over Redis: the "
        "Redis clock in its id; in process: when the publish began) to the end of its "
        "fan-out's loop, when the last write was handed to the kernel (--hibernate on; "
        "off: queued to the last connection's greenlet)", s.get("publish_to_socket_seconds"))


def _histogram(name: str, text: str, snapshot: dict | None) -> Iterator[Metric]:
    """A histogram family of a :meth:`comet.stats.Histogram.snapshot` (none without one)."""
    if snapshot:
        buckets = sorted(snapshot["buckets"].items(), key=lambda item: float(item[0]))
        yield HistogramMetricFamily(name, text,
                                    buckets=[(_le(bound), count) for bound, count in buckets],
                                    sum_value=snapshot["sum"])


def _refusals(s: dict) -> Iterator[Metric]:
    yield _by("comet_connections_refused", "connections refused for want of room: server "
              "full, shutting down, broker down", "reason",
              {r: s.get("refused_reasons", {}).get(r, 0) for r in ROOM_REFUSALS})
    yield _by("comet_limit_refusals", "requests and connections refused for a limit "
              "(--max-per-ip, request head too slow, ...), by limit", "limit",
              s.get("limits", {}).get("refused", {}))
    yield _by("comet_subscribers_refused", "subscribers refused for their token (401, 403), "
              "by reason", "reason", s.get("subscribers_refused", {}))
    yield _by("comet_publishers_refused", "publishers refused (401, 403, 429), by reason",
              "reason", s.get("publishers_refused", {}))
    yield _counter("comet_publish_limited_messages", "messages refused over "
                   "--publish-rate-per-key, all publishers",
                   sum(s.get("publishes_limited", {}).values()))


def _broker(s: dict) -> Iterator[Metric]:
    broker = s.get("broker", {})
    workers = [w for w in s.get("workers", ()) if "error" not in w]
    ups = [w.get("broker", {}).get("up") for w in workers] if workers else [broker.get("up")]
    yield _gauge("comet_broker_up", "1 while the broker is reachable (with workers: from "
                 "every worker that answered), else 0", int(bool(ups) and all(ups)))
    if "kind" in broker:
        yield _gauge("comet_broker_info", "the broker in use", {("kind",): {
            (broker["kind"],): 1}})
    if broker.get("pubsub_lag_seconds") is not None:
        yield _gauge("comet_broker_pubsub_lag_seconds", "sampled, at most one read per "
                     f"process every {SAMPLE_PERIOD:g} s: how old a message read from Redis "
                     "pub/sub was when it was read (its id's Redis clock to this host's), "
                     "the latest sampled; with workers, the highest worker's",
                     broker["pubsub_lag_seconds"])
    if "subscribed_ids" in broker:
        yield _gauge("comet_broker_subscribed_ids", "ids whose subscription the broker "
                     "confirmed", broker["subscribed_ids"])
    if "kept" in broker:
        yield _gauge("comet_history_messages", "messages kept in the in-process history",
                     broker["kept"])
    for key, name, text in BROKER_COUNTERS:
        if isinstance(broker.get(key), int):
            yield _counter(name, text, broker[key])


def _process(s: dict) -> Iterator[Metric]:
    if s.get("rss_bytes") is not None:
        yield _gauge("comet_resident_memory_bytes", "resident memory of the serving "
                     "processes (with workers: their sum; shared pages counted in each)",
                     s["rss_bytes"])
    if s.get("pss_bytes") is not None:
        yield _gauge("comet_proportional_memory_bytes", "proportional set size of the "
                     "workers (pages they share counted once)", s["pss_bytes"])
    if s.get("open_files") is not None:
        yield _gauge("comet_open_files", "file descriptors open in the serving processes, "
                     "sockets included", s["open_files"])
    yield _gauge("comet_uptime_seconds", "seconds since the server started", s.get("uptime", 0))
    workers = s.get("workers")
    if workers is not None:
        silent = sum("error" in w for w in workers)
        yield _gauge("comet_workers", "workers, by whether they answered this scrape "
                     "(a silent one's figures are missing from the sums)",
                     {("state",): {("answering",): len(workers) - silent,
                                   ("silent",): silent}})


def _le(bound: str) -> str:
    return bound if bound == "+Inf" else repr(float(bound))


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value) -> GaugeMetricFamily:
    """A gauge of one value, or of ``{(label names,): {(label values,): value}}``."""
    if not isinstance(value, dict):
        return GaugeMetricFamily(name, text, value=value)
    (labels, samples), = value.items()
    family = GaugeMetricFamily(name, text, labels=list(labels))
    for values, sample in samples.items():
        family.add_metric(list(values), sample)
    return family


def _by(name: str, text: str, label: str, values: dict) -> CounterMetricFamily:
    """A counter by one label, a sample per value (in order, for a stable scrape)."""
    family = CounterMetricFamily(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family

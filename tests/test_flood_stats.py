"""flood.stats and flood.latency: the seed's line, summing processes, latency tokens."""

from __future__ import annotations

import random

from flood import latency, stats


def snap(active=0, closed=0, chunks=0, reasons=None, stamps=()):
    counters = stats.Counters()
    for _ in range(active):
        counters.opened(1000.0)
    counters.chunks = chunks
    for reason in (reasons or []):
        counters.close(reason, was_active=False)
    for sent in stamps:
        message = f"Recvd msg: hi {latency.stamp(now=sent)}\n".encode()
        counters.latency.observe(message, sent + 0.002)
    return counters.snapshot()


def test_stats_line_is_the_seeds_format():
    assert stats.stats_line({"active": 10000, "closed": 0, "chunks": 43120}) == \
        "Stats: {10000,0,43120}"


def test_two_processes_sum_into_one_line():
    a = snap(active=3, chunks=10, reasons=["status 404 (http://x/1)"], stamps=[1.7e9])
    b = snap(active=4, closed=0, chunks=5, reasons=["status 404 (http://x/2)",
                                                  "malformed chunk size b'zz' (http://x/3)"],
             stamps=[1.7e9, 1.7e9 + 1])
    total = stats.sum_snapshots([a, b])
    assert stats.stats_line(total) == "Stats: {7,3,15}"
    assert total["reasons"] == {"status 404": 2, "malformed chunk size": 1}
    assert total["latency"]["count"] == 3
    assert 1.9 <= total["latency"]["p50_ms"] <= 2.1


def test_latency_token_is_found_anywhere_in_a_chunk_and_ignored_when_absent():
    lat = latency.Latency()
    lat.observe(b"Chunk 3 for id 7\n", 2e9)
    lat.observe(b"ts=soon\n", 2e9)
    assert lat.count == 0
    lat.observe(b"Recvd msg: x ts=1764312345.123456 y\n", 1764312345.123456 + 0.5)
    assert lat.count == 1
    assert 499 <= latency.describe(lat.hist)["p50_ms"] <= 501


def test_encoded_histograms_round_trip_and_empty_ones_are_skipped():
    lat = latency.Latency()
    for ms in (1, 2, 3, 100):
        lat.observe(latency.stamp(now=1e9).encode(), 1e9 + ms / 1000)
    merged = latency.merge([lat.encode(), "", lat.encode()])
    assert merged.get_total_count() == 8
    assert latency.latency_line(latency.describe(merged)).startswith("Latency: p50=")
    assert latency.latency_line(latency.describe(latency.merge([]))) == ""


def test_accept_rate_needs_two_streams():
    one = stats.sum_snapshots([snap(active=1)])
    assert stats.accept_rate(one) is None


def test_values_counted_by_bucket_make_the_histogram_recording_each_would():
    """Latency counts values per hdrh bucket and records each bucket once: the
    histogram (its encoding, percentiles, min and max) must be the same."""
    rng = random.Random(7)
    direct = latency.new_histogram()
    lat = latency.Latency()
    assert direct.sub_bucket_count == 1 << latency._EXACT_BITS
    for _ in range(20_000):
        now = 1e9 + 10 ** rng.uniform(0, 9.5) / 1e6
        direct.record_value(max(int((now - 1e9) * 1_000_000), 1))  # as observe reads it
        lat.observe(b"ts=1000000000.000000", now)
    assert lat.count == 20_000
    assert lat.hist.encode() == direct.encode()
    assert latency.describe(lat.hist) == latency.describe(direct)
    assert lat.hist.get_min_value() == direct.get_min_value()


def test_bucket_of_is_the_lowest_value_of_the_bucket():
    hist = latency.new_histogram()
    for value in (1, 2047, 2048, 2049, 4097, 123_456_789, latency.HIGHEST_US):
        assert latency.bucket_of(value) == hist.get_lowest_equivalent_value(value)

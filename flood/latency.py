"""Delivery latency: the ``ts=<unix seconds>`` token in messages, and an HDR histogram of it.

msggen and bench stamp each message with the time it was sent; whoever receives a
chunk carrying the token records ``now - ts``. Histograms travel between processes
in HdrHistogram's compressed encoding so several flood processes sum into one.
Values are microseconds, from 1 us to one hour, 3 significant digits.
"""

from __future__ import annotations

import re
import time

from hdrh.histogram import HdrHistogram

#: The token msggen and bench put in a message: ``ts=1764312345.123456``.
TS_TOKEN = re.compile(rb"ts=(\d{9,11}(?:\.\d{1,9})?)")

LOWEST_US = 1
HIGHEST_US = 3600 * 1_000_000
DIGITS = 3


def stamp(text: str = "", now: float | None = None) -> str:
    """A message body carrying its send time, the format :data:`TS_TOKEN` finds."""
    ts = time.time() if now is None else now
    return f"{text} ts={ts:.6f}".lstrip()


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class Latency:
    """Records the latency of every stamped chunk a process receives.

    A broadcast to a million puts a million values through here in seconds,
    on the cores the server under test is using. hdrh's ``record_value`` is
    Python (~1.5 us a value), so values are counted first by the histogram
    bucket they fall in (:func:`bucket_of`, two integer operations and a dict
    increment) and go into the histogram, one ``record_value`` per bucket,
    only when someone reads it: the counts come out exactly as recording each.
    """

    __slots__ = ("_hist", "_pending", "_encoded", "_encoded_count")

    def __init__(self) -> None:
        self._hist = new_histogram()
        self._pending: dict[int, int] = {}
        self._encoded = ""
        self._encoded_count = -1

    def observe(self, payload: bytes, now: float) -> None:
        """Record ``now - ts`` if the chunk carries a token; cheap when it does not."""
        m = TS_TOKEN.search(payload) if b"ts=" in payload else None
        if m is None:
            return
        micros = int((now - float(m.group(1))) * 1_000_000)
        if micros < LOWEST_US:
            micros = LOWEST_US
        elif micros > HIGHEST_US:
            micros = HIGHEST_US
        shift = micros.bit_length() - _EXACT_BITS  # bucket_of, inline: once per message
        if shift > 0:
            micros = micros >> shift << shift
        pending = self._pending
        pending[micros] = pending.get(micros, 0) + 1

    @property
    def hist(self) -> HdrHistogram:
        """The histogram of everything observed so far."""
        if self._pending:
            pending, self._pending = self._pending, {}
            record = self._hist.record_value
            for value, count in pending.items():
                record(value, count)
        return self._hist

    @property
    def count(self) -> int:
        return self.hist.get_total_count()

    def encode(self) -> str:
        """The histogram for another process; re-encoded only when it changed."""
        count = self.count
        if count != self._encoded_count:
            self._encoded = self._hist.encode().decode("ascii") if count else ""
            self._encoded_count = count
        return self._encoded


#: values below this have a bucket of their own at 3 significant digits (hdrh's
#: sub-bucket count for DIGITS = 3 and LOWEST_US = 1); above, each power of two
#: is cut into 1,024 buckets
_EXACT_BITS = 11


def bucket_of(value: int) -> int:
    """The lowest value in ``value``'s histogram bucket: recording it counts the same."""
    shift = value.bit_length() - _EXACT_BITS
    return value if shift <= 0 else value >> shift << shift


def merge(encoded: list[str]) -> HdrHistogram:
    """One histogram from the encodings several processes sent (empty strings skipped)."""
    total = new_histogram()
    for text in encoded:
        if text:
            total.add(HdrHistogram.decode(text.encode("ascii")))
    return total


def describe(hist: HdrHistogram) -> dict:
    """p50/p99/max in milliseconds and the count: what the stats and the JSON show."""
    count = hist.get_total_count()
    if not count:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": count,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "max_ms": hist.get_max_value() / 1000,
    }


def latency_line(summary: dict) -> str:
    """``Latency: p50=1.2ms p99=3.4ms max=5.6ms n=100``; empty with no samples."""
    if not summary.get("count"):
        return ""
    return ("Latency: p50={p50_ms:.1f}ms p99={p99_ms:.1f}ms max={max_ms:.1f}ms n={count}"
            .format(**summary))


def buckets(hist: HdrHistogram) -> list[tuple[float, int]]:
    """(milliseconds, count) for each recorded value; the plot's histogram bars."""
    return [(item.value_iterated_to / 1000, item.count_at_value_iterated_to)
            for item in hist.get_recorded_iterator()]


def since(after: HdrHistogram, before: HdrHistogram) -> HdrHistogram:
    """What ``after`` recorded that ``before`` had not: one broadcast out of a running total."""
    diff = new_histogram()
    for item in after.get_recorded_iterator():
        value = item.value_iterated_to
        count = item.count_at_value_iterated_to - before.get_count_at_value(value)
        if count > 0:
            diff.record_value(value, count)
    return diff

"""Publishes per second per key: a token bucket for each publisher, nothing else.

A bucket holds up to one second's worth of messages (at least one) and
refills at ``rate`` a second. A request for ``count`` messages (a batch counts
its lines) passes when the bucket holds ``count``, or is full when ``count`` is
more than it can ever hold (a batch bigger than a second's worth is not
refused for ever; the bucket goes into debt and the key waits it off). A
refused request takes nothing and is told how long to wait (``Retry-After``).

The buckets are bounded by who may publish: one per identity the caller says
is current (a configured key's fingerprint, or the keyless loopback
publisher); those of keys rotated out are dropped. Pure arithmetic on a
clock: no I/O, no greenlet, no HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection


class TokenBucket:
    """Messages one publisher may send now; refilled by the clock."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        #: messages that may go now (negative: a debt a big batch left)
        self.tokens = tokens
        #: when ``tokens`` was last brought up to date (the clock's seconds)
        self.stamp = stamp


class RateLimiter:
    """``take(who, count)``: None when it may go, else seconds to wait."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError("a rate limit needs a positive rate")
        self.rate = rate
        #: the most a bucket holds: a second's worth, at least one message
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, who: str, count: int, current: Collection[str]) -> float | None:
        """Spend ``count`` of ``who``'s messages, or say how long until they would pass.

        ``current`` is who may publish now; buckets of anyone else are dropped
        first, so there are never more buckets than publishers.
        """
        if len(self._buckets) >= len(current) and who not in self._buckets:
            self._buckets = {k: b for k, b in self._buckets.items() if k in current}
        now = self._clock()
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = TokenBucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        needed = min(count, self.capacity)
        if bucket.tokens >= needed:
            bucket.tokens -= count
            return None
        return (needed - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least one."""
    return str(max(1, math.ceil(seconds)))

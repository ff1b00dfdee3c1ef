"""Token buckets: publishes per second per key, and the bucket itself.

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
    """Up to ``capacity`` at once, refilled at ``rate`` a second by ``clock``.

    The one bucket of the server: a publisher's messages (:class:`RateLimiter`,
    one per publisher) and a process's new connections (:mod:`comet.limits`,
    ``--max-new-per-second``).
    """

    __slots__ = ("rate", "capacity", "clock", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        #: the most it holds: by default a second's worth, at least one
        self.capacity = max(1.0, rate) if capacity is None else capacity
        self.clock = clock
        #: what may go now (negative: a debt a big batch left)
        self.tokens = self.capacity
        #: when ``tokens`` was last brought up to date (the clock's seconds)
        self.stamp = clock()

    def refill(self) -> float:
        """Bring ``tokens`` up to the clock; what it holds now."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def ready(self, count: int = 1) -> bool:
        """Would :meth:`take` of ``count`` pass now? Asks only."""
        return self.refill() >= min(count, self.capacity)

    def take(self, count: int = 1) -> float | None:
        """Spend ``count``, or say how many seconds until they would pass.

        ``count`` above the capacity passes once the bucket is full (a batch
        bigger than a second's worth is not refused for ever: the bucket goes
        into debt and waits it off). A refusal takes nothing.
        """
        needed = min(count, self.capacity)
        if self.refill() >= needed:
            self.tokens -= count
            return None
        return (needed - self.tokens) / self.rate


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
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = TokenBucket(self.rate, self.capacity, self._clock)
        return bucket.take(count)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least one."""
    return str(max(1, math.ceil(seconds)))

"""Group commit for publishes: the ones that arrive while a call is in flight go in the next one.

A publish to Redis is one script call: a round trip, two system calls in this
process and a command's overhead in Redis, whatever the number of messages in
it. Publishers that send one message per request (``POST /send/<id>`` on a few
keep-alive connections) would pay that for every message. So, as rueidis'
auto-pipelining does for Centrifuge and a database's group commit does for its
log, at most one publish call is in flight per broker: a publish that finds
the way free goes at once (no added latency when the rate is low), and the
ones that arrive meanwhile wait and then go together, in arrival order, in the
next call. Under load the calls grow and their number stays near one per
round trip.

Each caller gets its own results, or the call's exception. Ordering holds
where it is defined: one publisher's requests are sequential, so its messages
go in the order it sent them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import gevent
from gevent.event import AsyncResult

Item = TypeVar("Item")
Result = TypeVar("Result")

#: messages in one call at most; more wait for the next (a script's arguments are held
#: in Redis's memory while it runs, and one call must not hold the others up for long)
MAX_ITEMS = 512


class _Waiting(Generic[Item]):
    __slots__ = ("items", "result")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.result: AsyncResult = AsyncResult()


class Coalescer(Generic[Item, Result]):
    """Runs ``call(items) -> results`` (one result per item, in order), one call at a time.

    The first caller runs its own items; callers that come while a call runs
    queue, and when it ends a fresh greenlet runs everything queued (up to
    :data:`MAX_ITEMS` items per call) and hands each caller its slice.
    """

    def __init__(self, call: Callable[[list[Item]], list[Result]],
                 max_items: int = MAX_ITEMS) -> None:
        self._call = call
        self._max_items = max_items
        self._busy = False
        self._queue: deque[_Waiting[Item]] = deque()
        #: calls made and items sent in them, for /stats (items / calls = the mean batch)
        self.calls = 0
        self.items = 0

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        if self._busy:
            waiting = _Waiting(items)
            self._queue.append(waiting)
            return waiting.result.get()
        self._busy = True
        try:
            return self._run(list(items))
        finally:
            self._next()

    def _run(self, items: list[Item]) -> list[Result]:
        self.calls += 1
        self.items += len(items)
        return self._call(items)

    def _next(self) -> None:
        """Start the queued callers' call, or free the way if none queue."""
        if not self._queue:
            self._busy = False
            return
        batch, count = [], 0
        while self._queue and (not batch or count + len(self._queue[0].items) <= self._max_items):
            waiting = self._queue.popleft()
            batch.append(waiting)
            count += len(waiting.items)
        gevent.spawn(self._run_for, batch)

    def _run_for(self, batch: list[_Waiting[Item]]) -> None:
        try:
            results = self._run([item for waiting in batch for item in waiting.items])
        except BaseException as exc:  # every caller hears of it, a kill included
            shown = exc if isinstance(exc, Exception) else RuntimeError("publish interrupted")
            for waiting in batch:
                waiting.result.set_exception(shown)
            if shown is not exc:
                raise
        else:
            start = 0
            for waiting in batch:
                end = start + len(waiting.items)
                waiting.result.set(results[start:end])
                start = end
        finally:
            self._next()

"""One shared timer for every hibernated connection: ticks, heartbeats, pings.

A timer per connection (a libev timer and a greenlet waiting on it) costs
hundreds of bytes each; a hibernated connection costs one list entry here (8
bytes; a set entry costs ~90 by tracemalloc). Time is cut into slots of
``resolution`` seconds; a connection due at time t is listed in slot
``int(t / resolution)`` and remembers that slot's list in its ``slot``
attribute (the list itself: a slot number would be one more int object, 32
bytes, per connection).
One greenlet wakes once a slot, takes every connection due, and calls its
``on_timer()``; a connection that wants another turn calls
:meth:`TimerWheel.schedule` again from there. Cancelling only forgets the
slot on the connection: the list entry stays until its slot comes round and
is skipped then, because the connection no longer names that slot.

The greenlet runs only while something is scheduled: an empty wheel costs
nothing and leaves nothing behind (the leak test checks ``len(wheel) == 0``).
"""

from __future__ import annotations

import logging
import time

import gevent

log = logging.getLogger(__name__)


class TimerWheel:
    """Slots of due connections; each connection is in at most one slot (its ``slot``)."""

    def __init__(self, resolution: float = 0.1, clock=time.monotonic) -> None:
        #: seconds per slot: how late a tick may come at most
        self.resolution = resolution
        self._clock = clock
        self._slots: dict[int, list] = {}
        self._count = 0
        self._runner: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return self._count

    def schedule(self, conn, delay: float) -> None:
        """Call ``conn.on_timer()`` in about ``delay`` seconds (replacing any earlier turn)."""
        self.cancel(conn)
        slot = int((self._clock() + delay) / self.resolution) + 1
        due = self._slots.get(slot)
        if due is None:
            due = self._slots[slot] = []
        due.append(conn)
        conn.slot = due
        self._count += 1
        if self._runner is None:
            self._runner = gevent.spawn(self._run)

    def cancel(self, conn) -> None:
        if conn.slot is not None:
            conn.slot = None
            self._count -= 1

    def _run(self) -> None:
        try:
            while self._count:
                now_slot = int(self._clock() / self.resolution)
                for slot in sorted(s for s in self._slots if s <= now_slot):
                    due = self._slots.pop(slot)
                    for conn in due:
                        if conn.slot is not due:
                            continue  # cancelled, or moved to another slot
                        conn.slot = None
                        self._count -= 1
                        try:
                            conn.on_timer()
                        except Exception:  # one bad connection must not stop the others
                            log.exception("timer callback of %r failed", conn)
                gevent.sleep(self.resolution)
        finally:
            self._runner = None
            if not self._count:
                self._slots.clear()  # only cancelled entries can be left

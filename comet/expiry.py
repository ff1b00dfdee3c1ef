"""When a held connection's token runs out: one event-loop timer per such connection.

Only connections opened with a token are here (none at all when subscribing
is open), so the cost falls only where tokens are on: a libev timer and a
dict entry per connection, gone when the connection closes (the hub cancels
its timer in ``close``), so what this holds is bounded by the connections
held. The timer wheel (:mod:`comet.timerwheel`) is not used: a connection
waits in one wheel slot at a time, for its tick or heartbeat.

A timer's callback runs in the event loop, where nothing may block; it only
spawns a greenlet that ends the connection, so a greenlet exists only at the
moment a token expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent


class Expiries:
    """Calls ``on_expiry(conn)`` when a connection's token runs out, unless it closed first."""

    def __init__(self, on_expiry: Callable[[object], None], clock=time.time) -> None:
        self._on_expiry = on_expiry
        self._clock = clock
        self._timers: dict = {}

    def __len__(self) -> int:
        return len(self._timers)

    def at(self, conn, when: float) -> None:
        """End ``conn`` at ``when`` (seconds since the epoch; at once if it has passed)."""
        self.cancel(conn)
        timer = gevent.get_hub().loop.timer(max(0.0, when - self._clock()))
        self._timers[conn] = timer
        timer.start(self._fire, conn)

    def cancel(self, conn) -> None:
        """Forget ``conn``'s timer (it closed); nothing if it has none."""
        timer = self._timers.pop(conn, None)
        if timer is not None:
            timer.stop()
            timer.close()

    def _fire(self, conn) -> None:
        self.cancel(conn)
        gevent.spawn(self._on_expiry, conn)

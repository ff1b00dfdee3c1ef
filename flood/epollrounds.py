"""An epoll set served from one greenlet: sleep on it through gevent's hub, handle rounds.

The flood's reader (held streams) and connector (openings) each keep their
descriptors in a plain ``select.epoll`` rather than a gevent watcher per
socket: one object per connection is their budget. An epoll descriptor is
itself pollable, so one greenlet waits on it in gevent's loop and, when it is
ready, takes the ready descriptors in rounds of at most :data:`ROUND`, yielding
between rounds so the process's other greenlets (pacing, reporting) run.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import gevent

#: ready descriptors handled per round before yielding to the other greenlets
ROUND = 1024


def serve(epoll: select.epoll, handle: Callable[[list[tuple[int, int]]], None],
          gap: float = 0.0) -> None:
    """Forever (until killed): each round's ``(fd, events)`` to ``handle``, then a sleep
    of ``gap`` seconds (0: just a yield) before looking again."""
    hub = gevent.get_hub()
    watcher = hub.loop.io(epoll.fileno(), 1)
    while True:
        events = epoll.poll(0, ROUND)
        if not events:
            hub.wait(watcher)
            continue
        handle(events)
        gevent.sleep(gap)

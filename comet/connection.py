"""A streaming connection as the router sees it: a bounded queue and a wake-up.

:class:`QueuedConnection` is the plain design the seed mirrors: one greenlet
per connection waits in its response iterator; the router's ``deliver`` only
appends to a bounded deque and sets an event, so a send never waits on a
socket. When the deque is full the router drops the connection: its queue is
emptied and its socket shut down, so a blocked write ends at once and memory
stays bounded.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

from gevent.event import Event


class QueuedConnection:
    """One subscriber's state: ids, pending messages, and why it ended."""

    __slots__ = (
        "ids",        #: ids logged in as (owned by the router)
        "transport",  #: name of the transport, for /stats ("test", ...)
        "_queue",     #: messages delivered but not yet written
        "_limit",     #: queue length at which the reader counts as too slow
        "_wakeup",    #: set when there is something to write or the stream must end
        "_socket",    #: the client socket when the server exposes it, to abort writes
        "ended",      #: None while live, else why the stream ends
        "abandoned",  #: True when dropped: end without a farewell
        "seen",       #: seq of the newest message written (replay dedupe)
    )

    def __init__(self, transport: str, limit: int, sock: socket.socket | None = None) -> None:
        self.ids: tuple[str, ...] = ()
        self.transport = transport
        self._queue: deque = deque()
        self._limit = limit
        self._wakeup = Event()
        self._socket = sock
        self.ended: str | None = None
        self.abandoned = False
        self.seen = 0

    def deliver(self, message: Any) -> bool:
        if self.ended is not None:
            return True  # ending: the message is moot, not a slow reader
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(message)
        self._wakeup.set()
        return True

    def drop(self, reason: str) -> int:
        """Abandon the stream now: forget what is queued and stop any blocked write."""
        self.abandoned = True
        self.end(reason)
        discarded = len(self._queue)
        self._queue.clear()
        if self._socket is not None:
            try:
                # Wakes a greenlet blocked in sendall (EPIPE), without closing
                # the descriptor under the server's feet.
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return discarded

    def end(self, reason: str) -> None:
        """Finish the stream after what is queued (server shutdown)."""
        if self.ended is None:
            self.ended = reason
        self._wakeup.set()

    def take(self) -> list:
        """What is queued and not yet seen (a replay may have covered it), oldest first."""
        seen = self.seen
        items = [m for m in self._queue if m.seq > seen]
        self._queue.clear()
        self._wakeup.clear()
        if items:
            self.seen = items[-1].seq
        return items

    def wait(self, timeout: float) -> None:
        """Sleep until a delivery, an end, or ``timeout`` seconds."""
        if not self._queue and self.ended is None:
            self._wakeup.wait(timeout)

"""The life of a streaming response (``/test/`` chunked lines, ``/events/`` SSE).

One generator per connection, from login to logout: it yields what the client
must read next and otherwise sleeps in :meth:`QueuedConnection.wait`, the way
one Erlang process per connection sleeps in ``receive`` in the seed. The HTTP
server writes each yielded piece as one chunk; when a write fails the server
closes the generator and ``finally`` logs the connection out at once.

What differs between transports is only framing, given by a :class:`Framing`.
:class:`StreamResponse` is the WSGI body that either runs this life or, where
the server offers it, hibernates the connection (hibernate.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from comet.connection import QueuedConnection
from comet.framing import Framing
from comet.hibernate import SleepingConnection
from comet.subscriptions import Subscriptions


def stream_life(subs: Subscriptions, conn: QueuedConnection, ids: list[str],
                framing: Framing, last_id: str | None = None,
                resume: bool = False) -> Iterator[bytes]:
    """One connection's response body; logs out in ``finally`` whatever ends it."""
    period = getattr(subs.settings, framing.period)
    id = ids[0]
    replay = subs.open(conn, ids, last_id, resume)
    try:
        yield framing.opening(id)
        if replay is not None:
            if replay.missed and framing.missed is not None:
                yield framing.missed(replay.start, last_id)
            for message in replay.messages:
                yield framing.message(message)
        n = 1
        next_tick = time.monotonic() + period
        while True:
            for message in conn.take():
                yield framing.message(message)
            if conn.ended is not None:
                break
            now = time.monotonic()
            if now >= next_tick:
                yield framing.tick(n, id)
                n += 1
                next_tick = max(next_tick + period, now)
            else:
                conn.wait(next_tick - now)
        farewell = None if conn.abandoned else framing.farewell(conn.ended)
        if farewell:
            yield farewell
    finally:
        subs.close(conn)


class StreamResponse:
    """A stream's WSGI body, and the seam where a connection may leave its greenlet.

    Any WSGI server iterates it: that runs :func:`stream_life`, and the
    request's greenlet sleeps in it between chunks (the plain design, the
    only one under gunicorn's stock workers). comet's own handler instead
    calls :meth:`hibernate`, writes the bytes it returns as the first chunk,
    lets go of the socket and ends the greenlet (``--hibernate on``).
    Everything else, login, replay, framing, is the same either way.
    """

    def __init__(self, subs: Subscriptions, ids: list[str], framing: Framing,
                 last_id: str | None, resume: bool, abort_socket=None) -> None:
        self.subs = subs
        self.ids = ids
        self.framing = framing
        self.last_id = last_id
        self.resume = resume
        self._abort_socket = abort_socket
        self._life: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        conn = QueuedConnection(self.framing.name, self.subs.settings.queue_limit,
                                self._abort_socket)
        self._life = stream_life(self.subs, conn, self.ids, self.framing,
                                 self.last_id, self.resume)
        return self._life

    def close(self) -> None:
        if self._life is not None:
            self._life.close()

    def hibernate(self) -> tuple[SleepingConnection, bytes]:
        """Log in a greenlet-less connection; returns it and the first body bytes.

        The connection queues until the caller, having written those bytes
        after the headers, hands it the socket with ``awake(sock)``.
        """
        conn = SleepingConnection(self.subs, self.framing)
        replay = self.subs.open(conn, self.ids, self.last_id, self.resume)
        first = [self.framing.opening(self.ids[0])]
        if replay is not None:
            if replay.missed and self.framing.missed is not None:
                first.append(self.framing.missed(replay.start, self.last_id))
            first.extend(self.framing.message(m) for m in replay.messages)
        return conn, b"".join(first)

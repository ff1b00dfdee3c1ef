"""The epoll reader: held streams read without a greenlet each, one reader greenlet per process.

Why: a parked greenlet costs about 8 KB here, and the flood's budget is 1 KB per held
connection. So :mod:`flood.connect` opens the connection and reads the response head
(with no greenlet per connection either); then the socket's file descriptor is handed
to the :class:`Reader`. A held stream is a :class:`Stream` record (three slots) plus its
decoder; the kernel keeps the socket. The reader greenlet sleeps on the epoll file
descriptor through gevent's hub (an epoll fd is itself pollable), wakes when any
stream has bytes, and reads each ready descriptor once per round.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import gevent

from flood import epollrounds
from flood.chunked import DecodeError
from flood.stats import Counters

#: Bytes read from one ready stream per round; a tick or a message is far smaller.
READ_SIZE = 65536

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP


class Stream:
    """A held connection: its descriptor, its body decoder, and its URL for the close reason."""

    __slots__ = (
        "fd",       # the socket's file descriptor, non-blocking, owned by the Reader
        "decoder",  # the transport's decoder (flood.transport says what it offers)
        "url",      # the URL string (shared with the URL list, not a copy)
    )

    def __init__(self, fd: int, decoder, url: str) -> None:
        self.fd = fd
        self.decoder = decoder
        self.url = url


class Reader:
    """Owns every held stream of this process: registers, reads, counts, closes."""

    def __init__(self, counters: Counters, on_closed: Callable[[str], None],
                 unread: bool = False) -> None:
        self.counters = counters
        self.on_closed = on_closed  #: called with each close reason (for ``Closed:`` lines)
        #: hold streams without reading them, so what the server sends fills the socket
        #: buffers (bench --unread: what unread data costs the kernel and the server)
        self.unread = unread
        self._epoll = select.epoll()
        self._streams: dict[int, Stream] = {}
        self._greenlet: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def add(self, fd: int, decoder, url: str, already: bytes) -> None:
        """Take over a stream whose head was read; ``already`` is body read with the head."""
        stream = Stream(fd, decoder, url)
        self._streams[fd] = stream
        if not self.unread:
            self._epoll.register(fd, _EVENTS)
        if already:
            self._consume(stream, already, time.time())

    def _run(self) -> None:
        epollrounds.serve(self._epoll, self._round)

    def _round(self, events: list[tuple[int, int]]) -> None:
        now = time.time()
        for fd, _mask in events:
            stream = self._streams.get(fd)
            if stream is not None:
                self._read(stream, now)

    def _read(self, stream: Stream, now: float) -> None:
        try:
            data = os.read(stream.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(stream, exc.strerror or str(exc))
            return
        if not data:
            why = "closed mid-chunk" if stream.decoder.mid_chunk else "closed by server"
            self._close(stream, why)
            return
        self._consume(stream, data, now)

    def _consume(self, stream: Stream, data: bytes, now: float) -> None:
        try:
            messages = stream.decoder.feed(data)
        except DecodeError as exc:
            self._close(stream, str(exc))
            return
        if stream.decoder.answers and not self._answer(stream):
            return
        if messages:
            self.counters.chunks += len(messages)
            observe = self.counters.latency.observe
            for message in messages:
                observe(message, now)
        if stream.decoder.done:
            self._close(stream, stream.decoder.end_reason)

    def _answer(self, stream: Stream) -> bool:
        """Send what the decoder owes the server (a pong, a close reply, the next poll).

        These are a few hundred bytes at most into an otherwise idle socket, so one
        non-blocking write is enough; if the socket cannot take them the connection is
        closed with that reason rather than given a greenlet to wait.
        """
        out = stream.decoder.take_replies()
        if not out:
            return True
        try:
            sent = os.write(stream.fd, out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(stream, exc.strerror or str(exc))
            return False
        if sent < len(out):
            self._close(stream, "send buffer full: could not answer the server")
            return False
        return True

    def _close(self, stream: Stream, reason: str) -> None:
        self._drop(stream)
        self.counters.close(reason, was_active=True)
        self.on_closed(f"{reason} ({stream.url})")

    def _drop(self, stream: Stream) -> None:
        if self._streams.pop(stream.fd, None) is None:
            return
        try:
            self._epoll.unregister(stream.fd)
        except (OSError, ValueError):
            pass
        os.close(stream.fd)

    def close_all(self) -> int:
        """End of run: close every held stream (they stay counted as Active, not Closed)."""
        if self._greenlet is not None:
            self._greenlet.kill(timeout=1)
        held = list(self._streams.values())
        for stream in held:
            self._drop(stream)
        self._epoll.close()
        return len(held)

"""Opening streams: connect, send the request, read the head, hand the socket to the reader.

Why no greenlet per connection: on this machine the flood shares two cores with the
server it measures, so every microsecond the flood spends opening a connection is
taken from the server's accept rate. A greenlet per opening (spawn, a gevent socket,
a watcher and a timer per wait, switches through the hub) cost ~190 us per connection;
here an opening is an :class:`Opening` record driven by one ``epoll`` set and one
greenlet per process, the way :mod:`flood.reader` holds streams (docs/benchmarks.rst
has the A/B).

The life of an opening, all non-blocking on a plain socket:

1. ``connect_ex`` (``EINPROGRESS``), then the request is sent at once: on loopback the
   handshake is usually done when ``connect`` returns. If the socket cannot take it
   yet, it waits for ``EPOLLOUT``, reads ``SO_ERROR`` and sends then.
2. ``EPOLLIN``: bytes are gathered until the head's blank line (at most
   :data:`flood.head.MAX_HEAD`), parsed, and checked by the transport.
3. The descriptor leaves this epoll set and belongs to :class:`flood.reader.Reader`.

Long-poll sends its request and is handed over at once (its head comes with the
answer). Each phase has ``timeout`` seconds, checked on the in-flight set (at most
``--concurrency`` records) every :data:`TIMEOUT_CHECK` seconds. Every way an opening
fails becomes a ``Closed:`` reason (:func:`close_reason`); nothing here raises to the
caller.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable

import gevent
import gevent.event

from flood import epollrounds, head
from flood.reader import Reader
from flood.sources import bind_source
from flood.stats import Counters
from flood.urls import BadUrl, parse_url

#: Receive size while waiting for the head; the head and the welcome chunk fit in one read.
HEAD_READ = 4096
#: Seconds between looks for openings past their deadline.
TIMEOUT_CHECK = 0.05
#: Seconds between rounds while openings keep arriving: each wake-up costs a context
#: switch, a few through gevent's hub and an ``epoll_wait``, so a round takes what
#: the last millisecond brought instead of waking once per connection.
ROUND_GAP = 0.001

_WRITABLE = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLRDHUP


class Resolver:
    """Host names resolved once per run, not once per connection."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple] = {}

    def __call__(self, host: str, port: int) -> tuple:
        key = (host, port)
        if key not in self._cache:
            family, _, _, _, addr = socket.getaddrinfo(
                host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
            self._cache[key] = (family, addr)
        return self._cache[key]


class Opening:
    """A connection between ``connect`` and its accepted head."""

    __slots__ = (
        "sock",      # the plain non-blocking socket (detached when handed to the reader)
        "url",       # the URL string, for the close reason
        "request",   # the request bytes (the transport's check and decoder read them)
        "unsent",    # request bytes the socket has not taken yet
        "received",  # head bytes gathered so far
        "deadline",  # time.monotonic() by which this phase must end
        "events",    # the epoll events it is registered for; 0 while not registered
    )

    def __init__(self, sock: socket.socket, url: str, request: bytes, deadline: float) -> None:
        self.sock = sock
        self.url = url
        self.request = request
        self.unsent = request
        self.received = b""
        self.deadline = deadline
        self.events = 0


class Connector:
    """Opens this process's connections, at most ``concurrency`` at once, without a
    greenlet each; :meth:`open` starts one and returns at once."""

    def __init__(self, counters: Counters, reader: Reader, transport,
                 on_closed: Callable[[str], None], timeout: float = 10.0,
                 concurrency: int = 256) -> None:
        self.counters = counters
        self.reader = reader
        self.transport = transport
        self.on_closed = on_closed
        self.timeout = timeout          #: seconds for connect + request, and again for the head
        self.concurrency = concurrency  #: openings in flight at most (open() waits beyond)
        self.resolve = Resolver()
        self._epoll = select.epoll()
        self._openings: dict[int, Opening] = {}
        self._room = gevent.event.Event()  #: set while fewer than ``concurrency`` are in flight
        self._room.set()
        self._greenlets: list[gevent.Greenlet] = []
        self._last_head: tuple[bytes, head.Head] = (b"", head.Head(0, {}))

    def __len__(self) -> int:
        return len(self._openings)

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._watch_deadlines)]

    def open(self, url: str, source: str | None = None) -> None:
        """Start one connection; waits (cooperatively) only while ``concurrency`` are in flight."""
        while len(self._openings) >= self.concurrency:
            self._room.clear()
            self._room.wait()
        counters = self.counters
        counters.attempted += 1
        counters.pending += 1
        sock = None
        try:
            dest = parse_url(url)
            request = self.transport.request(dest)
            family, addr = self.resolve(dest.host, dest.port)
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            if source:
                bind_source(sock, source)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except (OSError, BadUrl, UnicodeError) as exc:
            if sock is not None:
                sock.close()
            self._failed(url, exc)
            return
        opening = Opening(sock, url, request, time.monotonic() + self.timeout)
        self._openings[sock.fileno()] = opening
        self._send(opening)

    def _send(self, opening: Opening) -> None:
        """Send what the socket takes; then wait for the head (or hand a poll over)."""
        try:
            sent = opening.sock.send(opening.unsent)
        except BlockingIOError:  # still connecting (or, rarely, a full buffer)
            sent = 0
        except OSError as exc:
            self._fail(opening, self._connect_error(opening) or exc)
            return
        opening.unsent = opening.unsent[sent:]
        if opening.unsent:
            self._watch(opening, _WRITABLE)
            return
        if not self.transport.reads_head:
            self._hand_over(opening, b"")
            return
        opening.deadline = time.monotonic() + self.timeout
        self._watch(opening, _READABLE)

    def _watch(self, opening: Opening, events: int) -> None:
        if opening.events == events:
            return
        if opening.events:
            self._epoll.modify(opening.sock.fileno(), events)
        else:
            self._epoll.register(opening.sock.fileno(), events)
        opening.events = events

    @staticmethod
    def _connect_error(opening: Opening) -> OSError | None:
        """Why the connect failed, if it did (a send on a refused socket says only EPIPE)."""
        err = opening.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return OSError(err, os.strerror(err)) if err else None

    def _run(self) -> None:
        epollrounds.serve(self._epoll, self._round, ROUND_GAP)

    def _round(self, events: list[tuple[int, int]]) -> None:
        for fd, _mask in events:
            opening = self._openings.get(fd)
            if opening is None:
                continue
            if opening.unsent:
                error = self._connect_error(opening)
                if error is not None:
                    self._fail(opening, error)
                else:
                    self._send(opening)
            else:
                self._read(opening)

    def _watch_deadlines(self) -> None:
        """Fail each opening whose phase outlived ``timeout``; the set is at most
        ``concurrency`` long, so a look is cheap."""
        while True:
            gevent.sleep(TIMEOUT_CHECK)
            now = time.monotonic()
            late = [o for o in self._openings.values() if o.deadline <= now]
            for opening in late:
                self._fail(opening, TimeoutError())

    def _read(self, opening: Opening) -> None:
        try:
            data = opening.sock.recv(HEAD_READ)
            if not data:
                raise head.HeadError("closed before response head")
            opening.received += data
            split = head.split_head(opening.received)
            if split is None:
                return
            raw, body = split
            self.transport.check(self._parse(raw), opening.request)
        except BlockingIOError:
            return
        except (OSError, head.HeadError) as exc:
            self._fail(opening, exc)
            return
        self._hand_over(opening, body)

    def _parse(self, raw: bytes) -> head.Head:
        """The parsed head; a server's heads differ only when a second turns (``Date``),
        so the last one is kept and a head equal to it is not parsed again."""
        last_raw, last = self._last_head
        if raw == last_raw:
            return last
        parsed = head.parse_head(raw)
        self._last_head = (raw, parsed)
        return parsed

    def _hand_over(self, opening: Opening, body: bytes) -> None:
        self._forget(opening)
        counters = self.counters
        counters.pending -= 1
        counters.opened(time.time())
        self.reader.add(opening.sock.detach(), self.transport.decoder(opening.request),
                        opening.url, body)

    def _fail(self, opening: Opening, exc: BaseException) -> None:
        self._forget(opening)
        opening.sock.close()
        self._failed(opening.url, exc)

    def _failed(self, url: str, exc: BaseException) -> None:
        counters = self.counters
        counters.pending -= 1
        reason = close_reason(exc)
        counters.close(reason, was_active=False)
        self.on_closed(f"{reason} ({url})")

    def _forget(self, opening: Opening) -> None:
        fd = opening.sock.fileno()
        del self._openings[fd]
        if opening.events:
            self._epoll.unregister(fd)
        if not self._room.is_set():
            self._room.set()

    def close_all(self) -> int:
        """End of run: stop, and close what is still opening (left counted as pending)."""
        gevent.killall(self._greenlets, timeout=1)
        left = list(self._openings.values())
        for opening in left:
            opening.sock.close()
        self._openings.clear()
        self._epoll.close()
        self._room.set()
        return len(left)


def close_reason(exc: BaseException) -> str:
    """A short close reason: ``Connection refused``, ``timeout``, ``status 404``."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return str(exc)

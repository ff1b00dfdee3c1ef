"""Opening one stream: connect, send the request, read the head, hand the socket to the reader.

This runs in a short-lived greenlet from the flood's pool, so it may block (gevent
sockets). It ends as soon as the head is accepted: the descriptor is detached from
gevent and from then on belongs to :class:`flood.reader.Reader`. Every way it can
fail becomes a ``Closed:`` reason; nothing here raises to the caller.
"""

from __future__ import annotations

import socket as stdsocket
import time
from collections.abc import Callable

from gevent import socket

from flood import head
from flood.reader import Reader
from flood.sources import bind_source
from flood.stats import Counters
from flood.urls import BadUrl, Destination, parse_url

#: Receive size while waiting for the head; the head and the welcome chunk fit in one read.
HEAD_READ = 4096


class Resolver:
    """Host names resolved once per run, not once per connection."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple] = {}

    def __call__(self, host: str, port: int) -> tuple:
        key = (host, port)
        if key not in self._cache:
            family, _, _, _, addr = stdsocket.getaddrinfo(
                host, port, stdsocket.AF_INET, stdsocket.SOCK_STREAM)[0]
            self._cache[key] = (family, addr)
        return self._cache[key]


class Connector:
    """What every connecting greenlet shares: counters, reader, transport, options."""

    def __init__(self, counters: Counters, reader: Reader, transport,
                 on_closed: Callable[[str], None], timeout: float = 10.0) -> None:
        self.counters = counters
        self.reader = reader
        self.transport = transport
        self.on_closed = on_closed
        self.timeout = timeout  #: seconds for connect + request + head
        self.resolve = Resolver()

    def open(self, url: str, source: str | None = None) -> None:
        """One connection's whole life until it is held (or refused): the pool's job."""
        counters = self.counters
        counters.attempted += 1
        counters.pending += 1
        sock = None
        try:
            dest = parse_url(url)
            request = self.transport.request(dest)
            sock = self._connect(dest, source, request)
            body = self._read_head(sock, request) if self.transport.reads_head else b""
        except (OSError, head.HeadError, BadUrl, UnicodeError) as exc:
            counters.pending -= 1
            if sock is not None:
                sock.close()
            reason = close_reason(exc)
            counters.close(reason, was_active=False)
            self.on_closed(f"{reason} ({url})")
            return
        counters.pending -= 1
        counters.opened(time.time())
        fd = sock.detach()
        self.reader.add(fd, self.transport.decoder(request), url, body)

    def _connect(self, dest: Destination, source: str | None, request: bytes) -> socket.socket:
        family, addr = self.resolve(dest.host, dest.port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if source:
                bind_source(sock, source)
            sock.settimeout(self.timeout)
            sock.connect(addr)
            sock.sendall(request)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read_head(self, sock: socket.socket, request: bytes) -> bytes:
        """Read until the blank line; return the body bytes that came with the head."""
        buf = b""
        deadline = time.monotonic() + self.timeout
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(HEAD_READ)
            if not data:
                raise head.HeadError("closed before response head")
            buf += data
            split = head.split_head(buf)
            if split is not None:
                break
        raw, body = split
        self.transport.check(head.parse_head(raw), request)
        return body


def close_reason(exc: BaseException) -> str:
    """A short close reason: ``connect: Connection refused``, ``timeout``, ``status 404``."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return str(exc)

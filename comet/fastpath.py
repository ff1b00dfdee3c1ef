"""Requests answered at once, parsed by httptools: the publishing path (``--fast-path``).

Why: pywsgi spends ~100 us of CPU on a keep-alive request before the
application sees it: its header block goes through ``email``'s feed parser,
its environ is built key by key, and its answer goes out in two writes
(headers, then body). A publisher that sends one message per request pays
that per message, and it was two thirds of a worker's time on ``POST
/send/<id>`` (docs/benchmarks.rst, "A fast path for requests answered at
once"). httptools (llhttp, the parser Node.js and uvicorn use) parses a head
in a few microseconds; the answer goes out in one write.

Which requests: ``POST`` and ``DELETE`` over HTTP/1.1 that arrive whole with
a ``Content-Length`` body of at most :data:`BODY_LIMIT` (or none), a head of
at most :data:`HEAD_LIMIT` bytes and :data:`MAX_HEADERS` lines, in
origin-form, without ``Transfer-Encoding``, ``Expect`` or ``Upgrade``. They
are the publishing and subscription-editing requests, and every one of
them is answered at once (none becomes a stream).

Everything else (streams and every other GET, WebSocket upgrades, HEAD,
OPTIONS, HTTP/1.0, chunked or large bodies, a head that comes in pieces or
that httptools refuses) is pywsgi's, as it always was: :func:`serve` returns
the bytes it has read of that request, and the handler replays them in
front of the socket (:func:`replaying`), so pywsgi's answers, limits,
refusals and log lines are unchanged. The connection stays with pywsgi
from then on. A connection's first bytes are peeked at (``MSG_PEEK``), not
read: when they are not ``POST `` or ``DELETE `` (a stream, a WebSocket
handshake) pywsgi reads the request itself, and the connection cost one
system call here and no replay.
"""
from __future__ import annotations

import io
import logging
import socket
import time
from typing import TYPE_CHECKING

import gevent
import httptools
from gevent.pywsgi import format_date_time, unquote_latin1

if TYPE_CHECKING:
    from comet.server import CometHandler

log = logging.getLogger("comet.server")

#: the longest head answered here; pywsgi's own bound on a request line
#: (``pywsgi.MAX_REQUEST_LINE``), so a longer one reaches pywsgi and its 414
HEAD_LIMIT = 8192
#: http.client's bound on header lines, which pywsgi applies (a 400 beyond it)
MAX_HEADERS = 100
#: the largest body answered here; a larger one is streamed by pywsgi to the
#: app, which refuses what is over its own limits (413)
BODY_LIMIT = 256 * 1024
#: one read from the socket
RECV_SIZE = 64 * 1024
#: what a request answered here starts with
FAST_STARTS = (b"POST ", b"DELETE ")
#: bytes looked at, not read, to tell a connection's first request
PEEK_SIZE = max(map(len, FAST_STARTS))
#: header names (lower case) that send a request to pywsgi
PYWSGI_HEADERS = frozenset((b"transfer-encoding", b"expect", b"upgrade"))

INTERNAL_ERROR = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 22\r\nConnection: close\r\n\r\nInternal Server Error\n")


class _Head:
    """httptools' callbacks for one request head: the URL and the header lines."""

    __slots__ = ("url", "headers")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


class _Date:
    """The ``Date`` header's value, formatted once a second, not once an answer."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, format_date_time(second)
        return self.value


_date = _Date()


def serve(handler: CometHandler) -> bytes | None:
    """Answer the connection's requests while they are this path's.

    Returns None when the connection is done (the client left or asked to
    close, an answer said ``Connection: close``, or no request came within
    --read-timeout); b"" when its first request is pywsgi's, nothing of it
    read yet (a stream's connection: its bytes are only peeked at); else the
    bytes read of the first request that is pywsgi's, which the handler
    replays to pywsgi.
    """
    sock = handler.socket
    first = _peek(handler)
    if not first:
        return first  # None: done; b"": pywsgi's, still unread in the socket
    pending = b""  # read, not yet answered
    while True:
        if pending and not _may_be_fast(pending):
            return pending
        head_end = pending.find(b"\r\n\r\n", 0, HEAD_LIMIT)
        if head_end < 0:
            if len(pending) >= HEAD_LIMIT:  # no end within the bound: pywsgi's 414 or 400
                return pending
            try:
                if pending or not handler.requests:
                    data = sock.recv(RECV_SIZE)
                else:  # between requests: waiting is not working on one
                    data = _next_request(handler)
            except TimeoutError:
                if pending:  # a head in pieces: pywsgi waits for the rest, or refuses it
                    return pending
                handler.no_request_in_time()
                return None
            except OSError:  # reset: nothing to answer, as pywsgi does
                return None
            if not data:
                return pending or None
            pending += data
            continue
        request = _request(handler, pending, head_end + 4)
        if request is None:
            return pending
        environ, keep_alive, length = request
        end = head_end + 4 + length
        while len(pending) < end:  # the body's rest, bounded by BODY_LIMIT
            try:
                data = sock.recv(RECV_SIZE)
            except OSError:  # a timeout among them
                data = b""
            if not data:  # gone or too slow: pywsgi takes what came and says so
                return pending
            pending += data
        environ["wsgi.input"] = io.BytesIO(pending[head_end + 4:end])
        pending = pending[end:]
        handler.requests += 1
        if not _answer(handler, environ) or not keep_alive:
            return None


def _next_request(handler: CometHandler) -> bytes:
    """The first bytes of the connection's next request, waited for outside the
    server's pool.

    Why: the pool (``--max-handshakes``) bounds the requests a process works on,
    and gevent stops accepting while it is full. A keep-alive publisher that
    waits between requests works on nothing; in the pool, a hundred of them
    would keep every new connection, subscribers' too, in the listen backlog
    until --read-timeout closed one (seen: 256 msggen senders on two workers,
    280 requests waiting 30 s). So it leaves the pool while it waits and comes
    back, waiting for room like a new connection, when bytes arrive. A server
    stopping does not wait for a connection that is waiting; the process's
    exit closes it, as --read-timeout would have.
    """
    pool = handler.server.pool
    current = gevent.getcurrent()
    if pool is None or pool.size is None or current not in pool:
        return handler.socket.recv(RECV_SIZE)
    pool.discard(current)
    data = handler.socket.recv(RECV_SIZE)
    if data:
        pool.add(current)
    return data


def _peek(handler: CometHandler) -> bytes | None:
    """The connection's first bytes, left in the socket: a stream's connection goes
    to pywsgi with nothing read, so it costs no replay (measured: the accept rate of
    an 18,000 ramp fell 9 % when every first request was read and replayed).

    Returns them when they may start a request answered here, b"" when they cannot,
    None when the connection is done (closed, reset, or silent past --read-timeout).
    """
    try:
        first = handler.socket.recv(PEEK_SIZE, socket.MSG_PEEK)
    except TimeoutError:
        handler.no_request_in_time()
        return None
    except OSError:
        return None
    if not first:
        return None
    return first if _may_be_fast(first) else b""


def _may_be_fast(pending: bytes) -> bool:
    """Do these first bytes start a request answered here (or could they, when few)?"""
    return any(pending.startswith(start) or start.startswith(pending) for start in FAST_STARTS)


def _request(handler: CometHandler, pending: bytes, head_size: int) -> tuple | None:
    """The environ of the request whose head is ``pending[:head_size]``, whether the
    client keeps the connection, and its body's length; None if it is pywsgi's."""
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(pending[:head_size])
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # pywsgi's to refuse or to upgrade, with its own answer and log line
    if parser.get_http_version() != "1.1" or not head.url.startswith(b"/"):
        return None
    if len(head.headers) > MAX_HEADERS:
        return None
    environ = handler.server.get_environ()
    length = 0
    for name, value in head.headers:
        lower = name.lower()
        if lower in PYWSGI_HEADERS:
            return None
        text = value.decode("latin-1").strip()
        if lower == b"content-length":
            length = int(text)  # llhttp accepts digits only, and one value
            if length > BODY_LIMIT:
                return None
            environ["CONTENT_LENGTH"] = text
            continue
        if lower == b"content-type":
            environ["CONTENT_TYPE"] = text
            continue
        key = name.decode("latin-1")
        if "_" in key:  # as pywsgi: no HTTP_CONTENT_LENGTH smuggled in as Content_Length
            continue
        key = "HTTP_" + key.replace("-", "_").upper()
        if key in environ:
            environ[key] += ("; " if "COOKIE" in key else ",") + text
        else:
            environ[key] = text
    path, _, query = head.url.decode("latin-1").partition("?")
    address = handler.client_address
    environ.update({
        "REQUEST_METHOD": parser.get_method().decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_latin1(path),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": str(address[0]),
        "REMOTE_PORT": str(address[1]),
        "wsgi.input_terminated": True,
        "comet.socket": handler.socket,
    })
    return environ, parser.should_keep_alive(), length


def _answer(handler: CometHandler, environ: dict) -> bool:
    """Run the app on one request and write its answer in one write; False when the
    connection ends after it."""
    started: list = []
    early: list[bytes] = []

    def start_response(status: str, headers: list, exc_info=None):
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = (status, headers)
        return early.append  # WSGI's write(): kept and sent before the body

    sock = handler.socket
    try:
        result = handler.server.application(environ, start_response)
        try:
            body = b"".join([*early, *result])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        head, keep = _head(*started, body)
    except Exception:
        log.exception("%s %s from %s failed", environ["REQUEST_METHOD"],
                      environ["PATH_INFO"][:80], environ["REMOTE_ADDR"])
        try:
            sock.sendall(INTERNAL_ERROR)
        except OSError:
            pass
        return False
    try:
        sock.sendall(head + body)
    except OSError as exc:  # the client left, or stopped reading past the timeout
        log.info("%s left before its answer: %s", environ["REMOTE_ADDR"],
                 getattr(exc, "strerror", None) or exc)
        return False
    handler.code = int(started[0][:3])
    handler.log_fast_request(environ)
    return keep


def _head(status: str, headers: list, body: bytes) -> tuple[bytes, bool]:
    """The status line and headers, with ``Date`` and ``Content-Length`` filled in as
    pywsgi fills them; and whether the answer lets the connection go on."""
    out = bytearray(b"HTTP/1.1 ")
    out += status.encode("latin-1")
    out += b"\r\n"
    keep = date = length = True
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"newline in header {name!r}")  # no response splitting
        lower = name.lower()
        if lower == "connection":
            keep = value.lower() != "close"
        elif lower == "date":
            date = False
        elif lower == "content-length":
            length = False
        out += f"{name}: {value}\r\n".encode("latin-1")
    if date:
        out += b"Date: " + _date.now() + b"\r\n"
    if length and status[:3] not in ("204", "304"):
        out += b"Content-Length: %d\r\n" % len(body)
    out += b"\r\n"
    return bytes(out), keep


class _Replay(io.RawIOBase):
    """A socket's reads, after the bytes the fast path read and did not answer."""

    def __init__(self, first: bytes, raw: io.RawIOBase) -> None:
        super().__init__()
        self._first = memoryview(first)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        if self._first:
            count = min(len(buffer), len(self._first))
            buffer[:count] = self._first[:count]
            self._first = self._first[count:]
            return count
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def replaying(first: bytes, rfile: io.BufferedReader) -> io.BufferedReader:
    """pywsgi's ``rfile`` for a connection the fast path read from: ``first``, then the
    socket. ``rfile`` is the handler's own, never read yet (its buffer is empty)."""
    return io.BufferedReader(_Replay(first, rfile.detach()))

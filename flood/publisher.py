"""One keep-alive HTTP/1.1 connection that POSTs messages and reads the answers.

The message generator's cost per request is part of what it measures: on two
shared cores every microsecond the publisher spends is one the server does not
get. ``http.client`` parses each answer's head with the email package and, in
threads, pays the GIL's switching on top (about 230 us of CPU a request here);
this sends one buffer per request and reads the answer with the flood's own
head parser (:mod:`flood.head`), on a gevent socket, so that one process with
many greenlets can outrun the server it measures.

Answers framed by ``Content-Length``, chunked, or by the connection's close
are all read; anything else malformed raises :class:`~flood.head.HeadError` or
:class:`~flood.chunked.DecodeError` and the connection is dropped, to be
opened again by the next request.
"""

from __future__ import annotations

import socket

import gevent.socket

from flood.chunked import ChunkedDecoder, DecodeError
from flood.head import HeadError, parse_head, split_head

#: largest answer body read; a publish answer is a line of JSON
MAX_BODY = 1024 * 1024

__all__ = ["DecodeError", "HeadError", "Publisher"]


class Publisher:
    """``post(path, body)`` -> ``(status, body)`` on a connection kept between calls."""

    def __init__(self, host: str, port: int, timeout: float = 5.0,
                 headers: bytes = b"") -> None:
        self.host, self.port, self.timeout = host, port, timeout
        host_field = f"[{host}]" if ":" in host else host
        self._fields = (f"Host: {host_field}:{port}\r\nUser-Agent: comet-msggen\r\n"
                        .encode("latin-1") + headers)
        self._sock: socket.socket | None = None
        self._buf = b""

    def post(self, path: str, body: bytes, content_type: bytes | None = None
             ) -> tuple[int, bytes]:
        sock = self._sock or self._connect()
        request = [b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\n", self._fields,
                   b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        if content_type:
            request += [b"Content-Type: ", content_type, b"\r\n"]
        request += [b"\r\n", body]
        try:
            sock.sendall(b"".join(request))
            return self._answer(sock)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock, self._buf = None, b""

    def _connect(self) -> socket.socket:
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = sock, b""
        return sock

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def _answer(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self._buf
        while (parts := split_head(buf)) is None:
            buf += self._recv(sock)
        head_bytes, buf = parts
        head = parse_head(head_bytes)
        headers = head.headers
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body, buf = self._chunked(sock, buf)
        elif b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                raise HeadError("bad Content-Length") from None
            if not 0 <= length <= MAX_BODY:
                raise HeadError(f"answer of {length} bytes")
            while len(buf) < length:
                buf += self._recv(sock)
            body, buf = buf[:length], buf[length:]
        else:  # framed by the close
            body = buf
            while data := sock.recv(65536):
                body += data
                if len(body) > MAX_BODY:
                    raise HeadError("answer too long")
            self.close()
            return head.status, body
        self._buf = buf
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return head.status, body

    def _chunked(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        decoder, body = ChunkedDecoder(), []
        data = buf
        while True:
            body += decoder.feed(data)
            if decoder.done:
                return b"".join(body), b""  # what follows the last chunk is dropped
            if sum(map(len, body)) > MAX_BODY:
                raise HeadError("answer too long")
            data = self._recv(sock)

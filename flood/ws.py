"""WebSocket for the flood (RFC 6455): the opening handshake and a strict frame decoder.

Theory of operation: the connector (:mod:`flood.connect`) sends the GET with a fresh random
``Sec-WebSocket-Key`` (:func:`request_fields`) and checks the ``101`` head, including
``Sec-WebSocket-Accept`` (:func:`check_upgrade`). From then on the socket belongs
to the epoll reader and :class:`WsDecoder` turns bytes into messages, with no
greenlet: it keeps a partial frame, a fragmented message in progress, and the
replies owed to the server. A ping is owed a pong with the same payload, a close
frame a close frame with the same code; both are client frames, so masked
(:func:`client_frame`). The reader sends them (:meth:`WsDecoder.take_replies`).

Strict: server frames must not be masked, must not set RSV bits (no extension is
negotiated), must use the shortest length encoding, control frames must be final and
at most 125 bytes, continuations must continue something, text must be UTF-8, close
codes must be well formed. A violation closes that connection with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from flood.chunked import DecodeError
from flood.head import Head, HeadError

#: RFC 6455's GUID appended to the key for Sec-WebSocket-Accept.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Largest message (all its fragments) accepted; the server's --max-message default is 64 KiB.
MAX_MESSAGE = 1024 * 1024

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CONTROL = (CLOSE, PING, PONG)


class WsError(DecodeError):
    """The server broke the WebSocket protocol; the message is the close reason."""


def request_fields() -> bytes:
    """The header fields of an opening handshake, with a new random key."""
    key = base64.b64encode(os.urandom(16))
    return (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n")


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def check_upgrade(head: Head, request: bytes) -> None:
    """The ``101`` answer to ``request``, or a :class:`HeadError` saying what is wrong."""
    if head.status != 101:
        raise HeadError(f"status {head.status}")
    if head.headers.get(b"upgrade", b"").strip().lower() != b"websocket":
        raise HeadError("101 without Upgrade: websocket")
    tokens = [t.strip().lower() for t in head.headers.get(b"connection", b"").split(b",")]
    if b"upgrade" not in tokens:
        raise HeadError("101 without Connection: upgrade")
    start = request.index(b"Sec-WebSocket-Key: ") + len(b"Sec-WebSocket-Key: ")
    key = request[start:request.index(b"\r\n", start)]
    if head.headers.get(b"sec-websocket-accept", b"").strip() != accept_for(key):
        raise HeadError("wrong Sec-WebSocket-Accept")


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, masked frame (clients must mask); control payloads only, so <= 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def _text(payload: bytes) -> bytes:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WsError("text message is not UTF-8") from None
    return payload


class WsDecoder:
    """One WebSocket connection's read side: see the module docstring."""

    __slots__ = (
        "_buf",     # bytes of a frame not yet complete
        "_frag",    # payload so far of a fragmented message, or None
        "_text",    # the fragmented message is text (validate UTF-8 when it ends)
        "_out",     # masked frames owed to the server (pongs, the close reply)
        "_code",    # the close code received, None while open
    )

    #: the reader asks :meth:`take_replies` after each feed
    answers = True

    def __init__(self) -> None:
        self._buf = b""
        self._frag: bytes | None = None
        self._text = False
        self._out = b""
        self._code: int | None = None

    @property
    def done(self) -> bool:
        return self._code is not None

    @property
    def mid_chunk(self) -> bool:
        return bool(self._buf) or self._frag is not None

    @property
    def end_reason(self) -> str:
        return f"websocket close {self._code}"

    def take_replies(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return the messages (text or binary payloads) they complete."""
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        messages: list[bytes] = []
        while self._code is None and end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise WsError("reserved bits set")
            if b1 & 0x80:
                raise WsError("masked frame from the server")
            size, head = b1 & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
                if size < 126:
                    raise WsError("length not in its shortest form")
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                if size < 65536 or size >> 63:
                    raise WsError("length not in its shortest form")
            if size > MAX_MESSAGE:
                raise WsError(f"frame of {size} bytes")
            if end - pos < head + size:
                break
            payload = buf[pos + head:pos + head + size]
            pos += head + size
            self._frame(b0 & 0x80, b0 & 0x0F, payload, messages)
        self._buf = buf[pos:] if self._code is None else b""
        return messages

    def _frame(self, fin: int, opcode: int, payload: bytes, messages: list[bytes]) -> None:
        if opcode in _CONTROL:
            if not fin or len(payload) > 125:
                raise WsError("fragmented or long control frame")
            if opcode == PING:
                self._out += client_frame(PONG, payload)
            elif opcode == CLOSE:
                self._close(payload)
            return
        if opcode in (TEXT, BINARY):
            if self._frag is not None:
                raise WsError("new message inside a fragmented one")
            if fin:
                messages.append(_text(payload) if opcode == TEXT else payload)
            else:
                self._frag, self._text = payload, opcode == TEXT
        elif opcode == CONT:
            if self._frag is None:
                raise WsError("continuation frame without a message")
            if len(self._frag) + len(payload) > MAX_MESSAGE:
                raise WsError("message too large")
            self._frag += payload
            if fin:
                message, self._frag = self._frag, None
                messages.append(_text(message) if self._text else message)
        else:
            raise WsError(f"unknown opcode {opcode:#x}")

    def _close(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise WsError("close frame with a 1-byte payload")
        if payload:
            code = struct.unpack_from("!H", payload)[0]
            if code < 1000 or code in (1004, 1005, 1006, 1015) or 1015 < code < 3000:
                raise WsError(f"invalid close code {code}")
            _text(payload[2:])
            self._out += client_frame(CLOSE, payload[:2])
        else:
            code = 1005  # no status received
            self._out += client_frame(CLOSE)
        self._code = code

"""Reading a WebSocket client's frames, with no I/O: bytes in, events out (the h11 way).

Clients only listen on comet's ``/ws/``: what they send is pings, pongs,
the closing handshake, and text that is read and discarded. So the reader
keeps no message data; it checks each frame against RFC 6455 and against a
size limit taken from the frame's header, before its payload arrives, so a
client announcing a huge message costs nothing (gevent-websocket reads any
announced length into memory, which is why comet reads frames itself).

Use::

    reader = FrameReader(limit=4096)
    reader.feed(sock.recv(READ_CHUNK))
    while (event := reader.next_event()) is not None:
        ...   # Ping(payload), Pong(), Close(code), Message(text)

``feed`` at most :data:`READ_CHUNK` bytes between draining the events, and the
buffer stays bounded by ``limit`` plus a header plus one chunk. A broken frame
raises :class:`ProtocolError`; a message over the limit :class:`MessageTooBig`.
Imports nothing of comet's: the wire stays apart from the lives.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: bytes a client message may have: listeners have nothing big to say
MAX_CLIENT_MESSAGE = 4096
#: bytes to read from the socket at a time, between draining the events
READ_CHUNK = 4096
#: the longest frame header: 2 bytes, 8 of extended length, 4 of mask
MAX_HEADER = 14

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The client broke RFC 6455: close with 1002."""


class MessageTooBig(Exception):
    """A client message over the limit, refused from its header: close with 1009."""


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    pass


class Close(NamedTuple):
    #: the client's close code, or None when its frame had none
    code: int | None


class Message(NamedTuple):
    #: True for a text message, False for binary
    text: bool


Event = Ping | Pong | Close | Message


class FrameReader:
    """One client's frames, parsed as they arrive; keeps no payload but control frames'."""

    __slots__ = ("limit", "_buffer", "_message", "_size")

    def __init__(self, limit: int = MAX_CLIENT_MESSAGE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        #: opcode of the message whose frames are arriving (TEXT, BINARY), or None
        self._message: int | None = None
        #: payload bytes of that message so far
        self._size = 0

    def feed(self, data: bytes) -> None:
        """Take bytes read from the client; raises when more came than was drained."""
        self._buffer += data
        if len(self._buffer) > MAX_HEADER + max(self.limit, 125) + READ_CHUNK:
            raise MessageTooBig("more bytes than one frame and one read")

    @property
    def idle(self) -> bool:
        """Nothing half read: the reader may be dropped and a new one made later."""
        return not self._buffer and self._message is None

    def next_event(self) -> Event | None:
        """The next complete event, or None until more bytes are fed."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode == PING:
                return Ping(payload)
            if opcode == PONG:
                return Pong()
            if opcode == CLOSE:
                if len(payload) == 1:
                    raise ProtocolError("close frame with a one-byte payload")
                return Close(struct.unpack("!H", payload[:2])[0] if payload else None)
            if fin:
                text, self._message, self._size = self._message == TEXT, None, 0
                return Message(text)

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode, length, start = bool(first & 0x80), first & 0x0F, second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = struct.unpack_from("!Q", buf, 2)[0], 10
        self._check(first, second, fin, opcode, length)
        end = start + 4 + length
        if len(buf) < end:
            return None
        payload = b""
        if opcode >= CLOSE:  # only control payloads are kept: data is discarded unread
            mask = buf[start:start + 4]
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[start + 4:end]))
        elif opcode != CONTINUATION:
            self._message = opcode
        if opcode < CLOSE:
            self._size += length
        del buf[:end]
        return fin, opcode, payload

    def _check(self, first: int, second: int, fin: bool, opcode: int, length: int) -> None:
        """Refuse a frame from its header, before its payload is waited for."""
        if first & 0x70:
            raise ProtocolError("reserved bits set (no extension was agreed)")
        if not second & 0x80:
            raise ProtocolError("unmasked client frame")
        if opcode >= CLOSE:
            if opcode not in (CLOSE, PING, PONG):
                raise ProtocolError(f"unknown control opcode {opcode}")
            if length > 125 or not fin:
                raise ProtocolError("control frame fragmented or over 125 bytes")
            return
        if opcode in (TEXT, BINARY):
            if self._message is not None:
                raise ProtocolError("a new message before the last one ended")
        elif opcode != CONTINUATION:
            raise ProtocolError(f"unknown data opcode {opcode}")
        elif self._message is None:
            raise ProtocolError("continuation frame with no message")
        if self._size + length > self.limit:
            raise MessageTooBig(f"client message over {self.limit} bytes")

"""``GET /ws/<id>``: messages as WebSocket text frames, over gevent-websocket.

gevent-websocket 0.10.1 (2017, unmaintained) still handshakes on current
gevent and Python, with two faults this module works around, thinly:

* it reads a frame of any announced length into memory:
  :func:`next_client_message` reads client frames itself and refuses a
  message over 4 KiB from its header, before the payload (close 1009);
* its ``close(code, message)`` never puts the code in the frame and sends
  ``str(bytes)`` on Python 3, which clients reject: close frames are
  written with :func:`comet.transports.ws_close` instead.

Clients only listen here: a text frame from the client is read and ignored,
a binary frame closes with 1003 (unsupported data), a too-large one with
1009, a protocol error with 1002. A slow consumer is closed with 1008
(policy violation), a server shutdown with 1001 (going away).

Two lives, as for streams: the app returns a :class:`WebSocketResponse`; a
server that only iterates it runs :func:`websocket_life` (a writer greenlet
and a reader greenlet per connection); comet's handler hibernates it instead
(:class:`SleepingWebSocket`: no greenlet while idle, a read watcher wakes
one when the client sends a frame).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator

import gevent
from gevent.socket import wait_read
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header

from comet import transports
from comet.connection import QueuedConnection
from comet.framing import SHUTDOWN_REASON, framing_for
from comet.hibernate import SleepingConnection
from comet.subscriptions import Subscriptions

log = logging.getLogger(__name__)

#: bytes a client message may have: listeners have nothing big to say
MAX_CLIENT_MESSAGE = 4096

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009


class MessageTooBig(WebSocketError):
    pass


class _Stream:
    """What ``Header.decode_header`` reads from: anything with ``read(n)``."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


def next_client_message(read: Callable[[int], bytes], answer: Callable[[bytes], object],
                        limit: int = MAX_CLIENT_MESSAGE) -> str:
    """Read one whole client message; say what it was: "text", "binary" or "closed".

    ``read(n)`` returns up to n bytes (fewer only at EOF); ``answer(frame)``
    writes a pong or the closing handshake's reply. A message over ``limit``
    is refused from its header, before its payload is read. The text itself
    is discarded: clients only listen here.
    """
    stream = _Stream(read)
    kind, pending = None, 0
    while True:
        header = Header.decode_header(stream)
        opcode = header.opcode
        if header.flags or (opcode >= transports.WS_CLOSE and header.length > 125):
            raise ProtocolError("reserved bits set or control frame too long")
        if opcode < transports.WS_CLOSE:
            pending += header.length
            if pending > limit:
                raise MessageTooBig(f"client message over {limit} bytes")
        payload = read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF in a frame")
        if header.mask:
            payload = header.unmask_payload(payload)
        if opcode == transports.WS_PING:
            answer(transports.ws_frame(transports.WS_PONG, bytes(payload)))
        elif opcode == transports.WS_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CLOSE_NORMAL
            answer(transports.ws_close(code if 1000 <= code < 5000 else CLOSE_PROTOCOL_ERROR))
            return "closed"
        elif opcode in (transports.WS_TEXT, transports.WS_BINARY) and kind is None:
            kind = opcode
        elif opcode != transports.WS_PONG and not (opcode == 0 and kind):
            raise ProtocolError(f"unexpected opcode {opcode}")
        if kind is not None and header.fin and opcode != transports.WS_PONG:
            return "text" if kind == transports.WS_TEXT else "binary"


def read_client(read: Callable[[int], bytes], answer: Callable[[bytes], object],
                who: str) -> tuple[str, bytes | None]:
    """Read client messages until one ends the connection: (why, close frame to send)."""
    try:
        while True:
            ending = _ending(next_client_message(read, answer), who)
            if ending is not None:
                return ending
    except Exception as exc:  # noqa: BLE001 - every failure becomes a close, in _failure
        return _failure(exc, who)


def _ending(kind: str, who: str) -> tuple[str, bytes | None] | None:
    """What a client message means for the connection: None to go on."""
    if kind == "closed":
        return "client closed", None  # next_client_message answered the handshake
    if kind == "binary":
        log.info("closing websocket %s: binary frame", who)
        return "binary frame", transports.ws_close(CLOSE_UNSUPPORTED_DATA, "text frames only")
    return None


def _failure(exc: Exception, who: str) -> tuple[str, bytes | None]:
    if isinstance(exc, MessageTooBig):
        log.info("closing websocket %s: %s", who, exc)
        return "message too big", transports.ws_close(CLOSE_TOO_BIG, "message too big")
    if isinstance(exc, ProtocolError):
        log.info("closing websocket %s: protocol error: %s", who, exc)
        return "protocol error", transports.ws_close(CLOSE_PROTOCOL_ERROR, "protocol error")
    if isinstance(exc, (WebSocketError, OSError)):
        return "client gone", None
    raise exc


def closing_frame(conn) -> bytes:
    if conn.abandoned:
        return transports.ws_close(CLOSE_POLICY_VIOLATION, "slow consumer")
    if conn.ended == SHUTDOWN_REASON:
        return transports.ws_close(CLOSE_GOING_AWAY, conn.ended)
    return transports.ws_close(CLOSE_NORMAL)


# -- the plain life: two greenlets per connection ---------------------------------

def websocket_life(subs: Subscriptions, ws, conn: QueuedConnection, ids: list[str]) -> None:
    """Write the connection's messages as text frames, ping every heartbeat, until it ends."""
    heartbeat = subs.settings.heartbeat
    write = ws.raw_write
    subs.open(conn, ids)

    def reader() -> None:
        why, frame = read_client(ws.raw_read, write, ",".join(ids))
        if frame is not None:
            _send_quietly(write, frame)
            ws.closed = True
        conn.end(why)

    reading = gevent.spawn(reader)
    try:
        next_ping = time.monotonic() + heartbeat
        while True:
            for message in conn.take():
                write(transports.ws_text(message.data))
            if conn.ended is not None:
                break
            now = time.monotonic()
            if now >= next_ping:
                write(transports.WS_PING_FRAME)
                next_ping = now + heartbeat
            else:
                conn.wait(next_ping - now)
        if not ws.closed:
            _send_quietly(write, closing_frame(conn))
    except OSError:
        conn.end("client gone")
    finally:
        ws.closed = True  # gevent-websocket must not send its own (malformed) close frame
        reading.kill(block=False)
        subs.close(conn)


def _send_quietly(write: Callable[[bytes], object], frame: bytes) -> None:
    try:
        write(frame)
    except OSError:
        pass


# -- the hibernated life ------------------------------------------------------------

class SleepingWebSocket(SleepingConnection):
    """A WebSocket with no greenlet while idle; a read watcher wakes one for client frames."""

    __slots__ = ("watcher",)  #: libev io watcher on the socket, while asleep

    def __init__(self, subs: Subscriptions, framing) -> None:
        super().__init__(subs, framing)
        self.watcher = None

    def awake(self, sock) -> None:
        super().awake(sock)
        if self.sock is not None:
            self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
            self.watcher.start(self._readable)

    def _readable(self) -> None:
        self.watcher.stop()
        gevent.spawn(self._read_one)

    def _read_one(self) -> None:
        """The client sent something: read that message, then sleep again."""
        if self.sock is None:
            return
        who = ",".join(self.ids)
        try:
            ending = _ending(next_client_message(self._recv, self._write), who)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a close, in _failure
            ending = _failure(exc, who)
        if ending is not None:
            why, frame = ending
            self._close_with(why, frame)
        elif self.sock is not None and self.watcher is not None:
            self.watcher.start(self._readable)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n and self.sock is not None:
            wait_read(self.sock.fileno(), timeout=self.subs.settings.read_timeout)
            try:
                more = self.sock.recv(n - len(data))
            except BlockingIOError:
                continue
            if not more:
                break
            data += more
        return data

    def _close_with(self, why: str, frame: bytes | None) -> None:
        """Send ``frame``, then close without a reset that would destroy it in flight."""
        if frame is not None and self.sock is not None:
            try:
                self.sock.send(frame)
                self.sock.shutdown(socket.SHUT_WR)
                # Unread input at close() makes the kernel send RST, and a client
                # then loses the close frame: discard what has arrived (bounded).
                for _ in range(16):
                    if not self.sock.recv(4096):
                        break
            except OSError:
                pass
        self._finish(why)

    def drop(self, reason: str) -> int:
        """Close a slow reader with 1008 after the frame being written, not mid-frame."""
        close = transports.ws_close(CLOSE_POLICY_VIOLATION, "slow consumer")
        if not self.pending or self.writer is None:
            return self._close_with(reason, close) or 0
        # A frame may be half written: keep it, discard the rest, close after it;
        # the writer greenlet drains that much (bounded by --write-timeout), then ends.
        discarded = len(self.pending) - 1
        del self.pending[1:]
        self.pending.append(close)
        self.ended = reason
        self.subs.wheel.cancel(self)
        if self.watcher is not None:
            self.watcher.stop()
        return discarded

    def _finish(self, reason: str) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        super()._finish(reason)


class WebSocketResponse:
    """What the app returns for an upgraded /ws/ request.

    gevent-websocket's handler iterates it (``list(app(...))``): that runs the
    plain life. comet's handler calls :meth:`hibernate` instead and hands the
    socket to the :class:`SleepingWebSocket` it returns.
    """

    def __init__(self, subs: Subscriptions, ws, ids: list[str], abort_socket=None) -> None:
        self.subs, self.ws, self.ids, self._abort_socket = subs, ws, ids, abort_socket

    def __iter__(self) -> Iterator[bytes]:
        conn = QueuedConnection("ws", self.subs.settings.queue_limit, self._abort_socket)
        websocket_life(self.subs, self.ws, conn, self.ids)
        return iter(())

    def hibernate(self) -> SleepingWebSocket:
        conn = SleepingWebSocket(self.subs, framing_for("ws", self.subs.settings))
        self.subs.open(conn, self.ids)
        return conn

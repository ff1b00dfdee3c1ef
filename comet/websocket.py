"""``GET /ws/<id>``: messages as WebSocket text frames, over gevent-websocket.

gevent-websocket 0.10.1 (2017, unmaintained) still handshakes and frames on
current gevent and Python, but it reads a frame of any announced length into
memory. :class:`BoundedWebSocket` is the thin layer that fixes that: it checks
each frame header against a limit before the payload is read, and closes with
1009 (message too big). Swapping the class of the object gevent-websocket
made keeps its handshake and framing as they are, under ``python -m
comet.server`` and under gunicorn's ``GeventWebSocketWorker`` alike.

Clients only listen here: a text frame from the client is read and ignored,
a binary frame closes with 1003 (unsupported data), a too-large one with 1009.
A slow consumer is closed with 1008 (policy violation), a server shutdown
with 1001 (going away).
"""

from __future__ import annotations

import logging
import time

import gevent
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Header, WebSocket

from comet import transports
from comet.connection import QueuedConnection
from comet.subscriptions import SHUTDOWN_REASON, Subscriptions

log = logging.getLogger(__name__)

#: bytes a client message may have: listeners have nothing big to say
MAX_CLIENT_MESSAGE = 4096

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009


class MessageTooBig(WebSocketError):
    pass


class BoundedWebSocket(WebSocket):
    """gevent-websocket's WebSocket with a bound on what one client message may cost."""

    max_message = MAX_CLIENT_MESSAGE

    def read_frame(self):
        header = Header.decode_header(self.stream)
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY):
            self._pending = 0
        self._pending = getattr(self, "_pending", 0) + header.length
        if header.length > self.max_message or self._pending > self.max_message:
            raise MessageTooBig(f"client message over {self.max_message} bytes")
        if header.flags:
            raise WebSocketError("reserved bits set")
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        if header.mask:
            payload = header.unmask_payload(payload)
        return header, payload


def bounded(ws: WebSocket) -> BoundedWebSocket:
    if not isinstance(ws, BoundedWebSocket):
        ws.__class__ = BoundedWebSocket
    return ws


def _read_client(ws: BoundedWebSocket, conn: QueuedConnection) -> None:
    """Read (and ignore) what the client sends, to notice closes and bad frames."""
    try:
        while True:
            message = ws.receive()
            if message is None:
                conn.end("client closed")
                return
            if not isinstance(message, str):
                log.info("closing websocket %s: binary frame", ",".join(conn.ids))
                conn.end("binary frame from client")
                _close(ws, CLOSE_UNSUPPORTED_DATA, "text frames only")
                return
    except MessageTooBig as exc:
        log.info("closing websocket %s: %s", ",".join(conn.ids), exc)
        conn.end("client message too big")
        _close(ws, CLOSE_TOO_BIG, "message too big")
    except WebSocketError:
        conn.end("client gone")


def _close(ws: WebSocket, code: int, reason: str) -> None:
    if not ws.closed:
        try:
            ws.close(code, reason.encode())
        except WebSocketError:
            pass


def websocket_life(subs: Subscriptions, ws: WebSocket, conn: QueuedConnection,
                   ids: list[str]) -> None:
    """Write the connection's messages as text frames, ping every heartbeat, until it ends."""
    ws = bounded(ws)
    heartbeat = subs.settings.heartbeat
    subs.open(conn, ids)
    reader = gevent.spawn(_read_client, ws, conn)
    try:
        next_ping = time.monotonic() + heartbeat
        while True:
            for message in conn.take():
                ws.send(transports.text_of(message.data))
            if conn.ended is not None:
                break
            now = time.monotonic()
            if now >= next_ping:
                ws.send_frame(b"", ws.OPCODE_PING)
                next_ping = now + heartbeat
            else:
                conn.wait(next_ping - now)
        if conn.abandoned:
            _close(ws, CLOSE_POLICY_VIOLATION, "slow consumer")
        elif conn.ended == SHUTDOWN_REASON:
            _close(ws, CLOSE_GOING_AWAY, conn.ended)
        else:
            _close(ws, 1000, conn.ended or "")
    except (WebSocketError, OSError):
        conn.end("client gone")
    finally:
        reader.kill(block=False)
        subs.close(conn)

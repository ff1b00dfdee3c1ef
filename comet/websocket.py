"""``GET /ws/<id>``: messages as WebSocket text frames, over gevent-websocket.

gevent-websocket 0.10.1 (2017, unmaintained) still handshakes and frames on
current gevent and Python, but it reads a frame of any announced length into
memory. :func:`next_client_message` is the thin layer that fixes that: it
reads client frames itself, checks each header against a limit before the
payload is read, and closes with 1009 (message too big). gevent-websocket's
handshake, writing and close handling stay as they are, under ``python -m
comet.server`` and under gunicorn's ``GeventWebSocketWorker`` alike.

Clients only listen here: a text frame from the client is read and ignored,
a binary frame closes with 1003 (unsupported data), a too-large one with 1009.
A slow consumer is closed with 1008 (policy violation), a server shutdown
with 1001 (going away).
"""

from __future__ import annotations

import logging
import struct
import time

import gevent
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

from comet import transports
from comet.connection import QueuedConnection
from comet.subscriptions import SHUTDOWN_REASON, Subscriptions

log = logging.getLogger(__name__)

#: bytes a client message may have: listeners have nothing big to say
MAX_CLIENT_MESSAGE = 4096

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009


class MessageTooBig(WebSocketError):
    pass


def next_client_message(ws: WebSocket, limit: int = MAX_CLIENT_MESSAGE) -> str:
    """Read one whole client message and say what it was: "text", "binary" or "closed".

    gevent-websocket's ``receive`` reads a frame of any announced length into
    memory; this reads the frame header first and refuses a message over
    ``limit`` before reading its payload. Pings are answered and a close frame
    is answered as gevent-websocket does. The text itself is discarded:
    clients only listen here.
    """
    kind, pending = None, 0
    while True:
        header = Header.decode_header(ws.stream)
        opcode = header.opcode
        if header.flags or (opcode >= ws.OPCODE_CLOSE and header.length > 125):
            raise ProtocolError("reserved bits set or control frame too long")
        if opcode < ws.OPCODE_CLOSE:
            pending += header.length
            if pending > limit:
                raise MessageTooBig(f"client message over {limit} bytes")
        payload = ws.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF in a frame")
        if header.mask:
            payload = header.unmask_payload(payload)
        if opcode == ws.OPCODE_PING:
            ws.handle_ping(header, payload)
        elif opcode == ws.OPCODE_CLOSE:
            # echo the client's code (1000 when it gave none), not ws.handle_close's broken frame
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
            _close(ws, code if 1000 <= code < 5000 else CLOSE_PROTOCOL_ERROR)
            return "closed"
        elif opcode in (ws.OPCODE_TEXT, ws.OPCODE_BINARY) and kind is None:
            kind = opcode
        elif opcode != ws.OPCODE_PONG and not (opcode == ws.OPCODE_CONTINUATION and kind):
            raise ProtocolError(f"unexpected opcode {opcode}")
        if kind is not None and header.fin and opcode != ws.OPCODE_PONG:
            return "text" if kind == ws.OPCODE_TEXT else "binary"


def _read_client(ws: WebSocket, conn: QueuedConnection) -> None:
    """Read (and ignore) what the client sends, to notice closes and bad frames."""
    who = ",".join(conn.ids)
    try:
        while True:
            kind = next_client_message(ws)
            if kind == "closed":
                conn.end("client closed")
                return
            if kind == "binary":
                log.info("closing websocket %s: binary frame", who)
                conn.end("binary frame from client")
                _close(ws, CLOSE_UNSUPPORTED_DATA, "text frames only")
                return
    except MessageTooBig as exc:
        log.info("closing websocket %s: %s", who, exc)
        conn.end("client message too big")
        _close(ws, CLOSE_TOO_BIG, "message too big")
    except ProtocolError as exc:
        log.info("closing websocket %s: protocol error: %s", who, exc)
        conn.end("protocol error")
        _close(ws, CLOSE_PROTOCOL_ERROR, "protocol error")
    except (WebSocketError, OSError):
        conn.end("client gone")


def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    """Send a close frame with its status code, and mark the socket closed.

    gevent-websocket 0.10.1's ``close(code, message)`` never puts ``code`` in
    the frame and sends ``str(bytes)`` as the payload on Python 3, which
    clients reject ("Invalid close opcode"); this writes the frame as RFC 6455
    section 5.5.1 says.
    """
    if ws.closed:
        return
    try:
        ws.send_frame(struct.pack("!H", code) + reason.encode()[:120], ws.OPCODE_CLOSE)
    except (WebSocketError, OSError):
        pass
    finally:
        ws.closed = True


def websocket_life(subs: Subscriptions, ws: WebSocket, conn: QueuedConnection,
                   ids: list[str]) -> None:
    """Write the connection's messages as text frames, ping every heartbeat, until it ends."""
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
            _close(ws, 1000)
    except (WebSocketError, OSError):
        conn.end("client gone")
    finally:
        reader.kill(block=False)
        subs.close(conn)

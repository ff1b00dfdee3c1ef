"""The wire: how a message becomes bytes, one pure function per frame.

Nothing here touches a socket, knows about routing or imports anything of
comet's: each function takes a message (anything with ``id`` and ``data``),
a count or an :class:`~comet.ends.End`'s fields and returns the bytes a
transport sends, so framing is tested without a server (the h11 way). The
WebSocket frames a client sends are read by :mod:`comet.wsreader`, as pure.

``/test/`` (the seed's chunked stream) sends lines and SSE sends events; the
HTTP server wraps each in a chunk of its own. Long-poll answers one JSON
document; WebSocket sends a message's text as one text frame.
"""

from __future__ import annotations

import json
import random
import re
import struct

#: The zero-length chunk that ends a chunked body (RFC 9112, 7.1).
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body, for writers that bypass the HTTP server."""
    return b"%x\r\n%s\r\n" % (len(data), data)


#: Content type of the seed's /test/ stream.
TEST_CONTENT_TYPE = "text/html; charset=utf-8"


def test_welcome(id: str) -> bytes:
    """The first chunk of /test/<id>, sent at once."""
    return f"comet welcomes you! Your Id: {id}\n".encode()


def test_tick(n: int, id: str) -> bytes:
    """The n-th tick chunk of /test/<id> (n counts from 1, as in the seed)."""
    return f"Chunk {n} for id {id}\n".encode()


def test_message(message) -> bytes:
    """A routed message on /test/ (the seed's part 2: ``Recvd msg``)."""
    return b"Recvd msg: " + message.data + b"\n"


def test_farewell(reason: str) -> bytes:
    """The last data chunk of a stream the server ends on purpose (shutdown)."""
    return f"Bye: {reason}\n".encode()


# -- Server-Sent Events (WHATWG HTML, "Server-sent events") --------------------

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

#: a comment line: keeps proxies from closing an idle stream, and finds dead peers
SSE_HEARTBEAT = b": heartbeat\n\n"

#: name of the event that tells a resuming client some messages are gone
MISSED_EVENT = "missed"

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def sse_event(data: bytes, id: str | None = None, event: str | None = None) -> bytes:
    """One event; each line of ``data`` becomes a ``data:`` line (the spec joins them with LF).

    An event stream is UTF-8: bytes that are not are replaced, as in a WebSocket
    text frame, so that a strict client keeps its stream (one broadcast of bad
    bytes would otherwise break every subscriber's).
    """
    data = utf8(data)
    head = b""
    if event:
        head += b"event: " + event.encode() + b"\n"
    if id:
        head += b"id: " + id.encode() + b"\n"
    return head + b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(data)) + b"\n"


def sse_retry(milliseconds: int) -> bytes:
    """The reconnection delay hint; sent first, so headers and an event go out at once."""
    return b"retry: %d\n\n" % milliseconds


def jittered(milliseconds: int) -> int:
    """A reconnection delay drawn evenly from half to one and a half ``milliseconds``:
    the same mean, but clients told at once come back spread over that window."""
    return random.randint(milliseconds // 2, milliseconds * 3 // 2)


def sse_missed(position: str, last_event_id: str | None) -> bytes:
    """Some messages after ``last_event_id`` are gone; what is kept follows from ``position``."""
    detail = json.dumps({"last_event_id": last_event_id, "resume_from": position})
    return sse_event(detail.encode(), id=position, event=MISSED_EVENT)


# -- long-poll JSON -------------------------------------------------------------

POLL_CONTENT_TYPE = "application/json"


def poll_answer(messages: list, last: str, missed: bool = False) -> bytes:
    """``{"messages": [{"id", "data"}], "last": ...}``; data is UTF-8 text (bad bytes replaced)."""
    answer = {"messages": [{"id": m.id, "data": text_of(m.data)} for m in messages],
              "last": last}
    if missed:
        answer["missed"] = True
    return json.dumps(answer).encode() + b"\n"


def utf8(data: bytes) -> bytes:
    """``data`` if it is UTF-8 (the common case, not copied), else with bad bytes replaced."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return text_of(data).encode()
    return data


def text_of(data: bytes) -> str:
    """Message bytes as text for JSON and WebSocket text frames."""
    return data.decode("utf-8", errors="replace")


# -- WebSocket (RFC 6455): server frames, unmasked ------------------------------

WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


#: the FIN bit of a frame's first byte: the last (here: only) frame of a message
WS_FIN = 0x80


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame: servers never mask (RFC 6455, 5.1 and 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", WS_FIN | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", WS_FIN | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", WS_FIN | opcode, 127, n)
    return head + payload


def ws_text(data: bytes) -> bytes:
    """A message as one text frame: its bytes as UTF-8, bad bytes replaced."""
    return ws_frame(WS_TEXT, text_of(data).encode())


#: close codes (RFC 6455, 7.4.1) that the wire itself needs; the others are ends' (comet/ends.py)
WS_CLOSE_NORMAL = 1000
WS_CLOSE_PROTOCOL_ERROR = 1002


def ws_close(code: int, reason: str = "") -> bytes:
    """A close frame: the status code, then at most 120 bytes of reason (RFC 6455, 5.5.1)."""
    return ws_frame(WS_CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def ws_close_reply(code: int | None) -> bytes:
    """The answer to a client's close frame: its code echoed, or 1000 when it gave none.

    A code outside what a peer may send (RFC 6455, 7.4.2) is answered with 1002.
    """
    if code is None:
        return ws_close(WS_CLOSE_NORMAL)
    return ws_close(code if 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015)
                    else WS_CLOSE_PROTOCOL_ERROR)


#: the heartbeat of a WebSocket: clients answer it with a pong
WS_PING_FRAME = ws_frame(WS_PING, b"")

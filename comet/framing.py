"""How each transport frames what it sends, as data: one :class:`Framing` per transport.

Both lives of a connection (docs/design.rst, "Lives") use the same framing:
the plain life hands ``message(m)``, ``tick(n, id)`` and ``farewell(end)`` to
the HTTP server, which chunks them, or for a WebSocket writes them itself; the
sleeping life writes ``wire(...)`` of them to its socket, and ``ending(end)``
when it ends. Framings are built once per server (:func:`framing_for` is
cached), never per connection. Pure: bytes from :mod:`comet.wire`, ends from
:mod:`comet.ends`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from comet import wire
from comet.ends import End


class Framing(NamedTuple):
    """How one transport frames what it sends."""

    name: str                                   #: transport name in /stats
    content_type: str
    opening: Callable[[str], bytes]             #: first body bytes, from the first id
    message: Callable                           #: Message -> body bytes
    tick: Callable[[int, str], bytes]           #: (n, id) -> periodic body bytes
    farewell: Callable[[End], bytes]            #: end -> last body bytes (b"": none)
    missed: Callable[[str, str | None], bytes] | None  #: (position, last id) -> notice
    period: str                                 #: the Settings attribute giving tick seconds
    wire: Callable[[bytes], bytes]              #: body bytes -> socket bytes (sleeping life)
    ending: Callable[[End], bytes]              #: end -> the socket bytes that end it
    shows_id: bool                              #: the client sees message ids (resumes)


def _no_farewell(end: End) -> bytes:
    return b""


def _sse_farewell_for(retry: int) -> Callable[[End], bytes]:
    """An SSE stream's last bytes for an end: an event naming why, for the ends a client
    must act on (expired); a ``retry:`` drawn around ``retry`` ms for an end that many
    connections share (a shutdown), so that their clients come back spread out."""
    def farewell(end: End) -> bytes:
        last = wire.sse_event(end.reason.encode(), event=end.event) if end.event else b""
        if end.spread:
            last = wire.sse_retry(wire.jittered(retry)) + last
        return last
    return farewell


def _test_farewell(end: End) -> bytes:
    return wire.test_farewell(end.reason) if end.flush else b""


def _chunked_ending(farewell: Callable[[End], bytes]) -> Callable[[End], bytes]:
    def ending(end: End) -> bytes:
        last = farewell(end)
        return (wire.chunk(last) if last else b"") + wire.LAST_CHUNK
    return ending


def _ws_farewell(end: End) -> bytes:
    """A close frame with the end's code; none when the client closed or is gone."""
    return wire.ws_close(end.code, end.reason) if end.code is not None else b""


def _identity(data: bytes) -> bytes:
    return data


@functools.cache
def framing_for(name: str, settings) -> Framing:
    """The framing of transport ``name`` ("test", "events", "poll", "ws") for these settings."""
    if name == "test":
        return Framing("test", wire.TEST_CONTENT_TYPE, wire.test_welcome, wire.test_message,
                       wire.test_tick, _test_farewell, None, "interval", wire.chunk,
                       _chunked_ending(_test_farewell), False)
    if name == "events":
        retry = wire.sse_retry(settings.sse_retry)
        farewell = _sse_farewell_for(settings.sse_retry)
        return Framing("events", wire.SSE_CONTENT_TYPE, lambda id: retry,
                       lambda m: wire.sse_event(m.data, id=m.id),
                       lambda n, id: wire.SSE_HEARTBEAT, farewell, wire.sse_missed,
                       "heartbeat", wire.chunk, _chunked_ending(farewell), True)
    if name == "poll":  # a waiting poll sends nothing until its answer (lives' poll code)
        return Framing("poll", wire.POLL_CONTENT_TYPE, lambda id: b"", lambda m: b"",
                       lambda n, id: b"", _no_farewell, None, "poll_timeout", wire.chunk,
                       _chunked_ending(_no_farewell), True)
    if name == "ws":
        return Framing("ws", "", lambda id: b"", lambda m: wire.ws_text(m.data),
                       lambda n, id: wire.WS_PING_FRAME, _ws_farewell, None, "heartbeat",
                       _identity, _ws_farewell, False)
    raise ValueError(name)

"""How each transport frames what it sends, as data: one :class:`Framing` per transport.

The plain life (streams.py) yields ``message(m)``, ``tick(n, id)`` and
``farewell(reason)`` to the HTTP server, which chunks them; a hibernated
connection (hibernate.py) writes ``wire(...)`` of them to its socket itself,
and ``ending(reason)`` when it ends. Framings are built once per server
(:func:`framing_for` is cached), never per connection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from comet import transports

#: why connections end when the server stops (the /test/ farewell says it)
SHUTDOWN_REASON = "server shutting down"


class Framing(NamedTuple):
    """How one streaming transport frames what it sends."""

    name: str                                   #: transport name in /stats
    content_type: str
    opening: Callable[[str], bytes]             #: first chunk, from the first id
    message: Callable                           #: Message -> bytes
    tick: Callable[[int, str], bytes]           #: (n, id) -> periodic chunk
    farewell: Callable[[str], bytes | None]     #: reason -> last chunk, or None
    missed: Callable[[str, str | None], bytes] | None  #: (position, last id) -> notice
    period: str                                 #: the Settings attribute giving tick seconds
    wire: Callable[[bytes], bytes]              #: body bytes -> socket bytes (hibernated)
    ending: Callable[[str], bytes]              #: reason -> the socket bytes that end it


def _chunked_ending(farewell: Callable[[str], bytes | None]) -> Callable[[str], bytes]:
    def ending(reason: str) -> bytes:
        last = farewell(reason)
        return (transports.chunk(last) if last else b"") + transports.LAST_CHUNK
    return ending


def _ws_ending(reason: str) -> bytes:
    return transports.ws_close(1001 if reason == SHUTDOWN_REASON else 1000, reason)


@functools.cache
def framing_for(name: str, settings) -> Framing:
    """The framing of transport ``name`` ("test", "events", "poll", "ws") for these settings."""
    if name == "test":
        return Framing("test", transports.TEST_CONTENT_TYPE, transports.test_welcome,
                       transports.test_message, transports.test_tick,
                       transports.test_farewell, None, "interval", transports.chunk,
                       _chunked_ending(transports.test_farewell))
    if name == "events":
        retry = transports.sse_retry(settings.sse_retry)
        no_farewell = lambda reason: None  # noqa: E731 - SSE just ends
        return Framing("events", transports.SSE_CONTENT_TYPE, lambda id: retry,
                       lambda m: transports.sse_event(m.data, id=m.id),
                       lambda n, id: transports.SSE_HEARTBEAT, no_farewell,
                       transports.sse_missed, "heartbeat", transports.chunk,
                       _chunked_ending(no_farewell))
    if name == "poll":  # a hibernated poll's wait: its answer is written by longpoll.py
        return Framing("poll", transports.POLL_CONTENT_TYPE, lambda id: b"", lambda m: b"",
                       lambda n, id: b"", lambda reason: None, None, "poll_timeout",
                       transports.chunk, _chunked_ending(lambda reason: None))
    if name == "ws":
        return Framing("ws", "", lambda id: b"", lambda m: transports.ws_text(m.data),
                       lambda n, id: transports.WS_PING_FRAME, lambda reason: None, None,
                       "heartbeat", bytes, _ws_ending)
    raise ValueError(name)

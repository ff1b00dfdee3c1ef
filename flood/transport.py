"""Which comet transport the flood speaks (``--transport``): the request and the body decoder.

A transport is what differs between ``/test/`` streams, SSE, long-poll and WebSocket
for the flood: the request bytes, the head it accepts, and a per-connection decoder.
The connecting and reading code is the same for all. A decoder has
``feed(bytes) -> [message, ...]`` (raising :class:`flood.chunked.DecodeError` with the
close reason), ``done`` and ``end_reason`` (the server ended it), ``mid_chunk`` (it was
cut mid-message), and ``answers``: when true, the reader sends ``take_replies()`` after
each feed (WebSocket pongs and close replies, the next long-poll request).

============  =================  ===================================================
transport     path               held as
============  =================  ===================================================
``stream``    ``/test/<id>``     chunked body; each data chunk is a message
``sse``       ``/events/<id>``   chunked ``text/event-stream``; each event with data
``ws``        ``/ws/<id>``       ``101`` upgrade; each text or binary message
``poll``      ``/poll/<id>``     one answer per request, the next sent by the reader
============  =================  ===================================================

Adding another is one class here plus its decoder module, and one line in
:data:`TRANSPORTS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flood import head, ws
from flood.chunked import ChunkedDecoder
from flood.poll import PollDecoder
from flood.sse import SseDecoder

if TYPE_CHECKING:  # flood.urls takes each transport's path from here
    from flood.urls import Destination


class NotBuilt(ValueError):
    """Asked for a transport the flood does not speak."""


class StreamTransport:
    """The seed's ``GET /test/<id>``: a chunked body, each chunk one message or tick."""

    name = "stream"
    path = "/test/"       #: the server's path for this transport (bench, flood.urls read it)
    reads_head = True     #: the connector reads and checks the response head

    def request(self, dest: Destination) -> bytes:
        return head.request(dest.host, dest.port, dest.path)

    def check(self, response: head.Head, request: bytes) -> None:
        head.check_stream(response)

    def decoder(self, request: bytes) -> ChunkedDecoder:
        return ChunkedDecoder()


class SseTransport(StreamTransport):
    """``GET /events/<id>``: Server-Sent Events in a chunked body."""

    name = "sse"
    path = "/events/"

    def request(self, dest: Destination) -> bytes:
        return head.request(dest.host, dest.port, dest.path,
                            b"Accept: text/event-stream\r\n")

    def check(self, response: head.Head, request: bytes) -> None:
        head.check_stream(response)
        kind = response.headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"text/event-stream":
            raise head.HeadError(f"content type {kind.decode('latin-1')!r}, not an event stream")

    def decoder(self, request: bytes) -> SseDecoder:
        return SseDecoder()


class WsTransport(StreamTransport):
    """``GET /ws/<id>``: a real opening handshake, then frames decoded in the reader."""

    name = "ws"
    path = "/ws/"

    def request(self, dest: Destination) -> bytes:
        return head.request(dest.host, dest.port, dest.path, ws.request_fields())

    def check(self, response: head.Head, request: bytes) -> None:
        ws.check_upgrade(response, request)

    def decoder(self, request: bytes) -> ws.WsDecoder:
        return ws.WsDecoder()


class PollTransport(StreamTransport):
    """``GET /poll/<id>?since=<last>`` in a loop; the reader parses answers and asks again."""

    name = "poll"
    path = "/poll/"
    reads_head = False  # the head comes with the answer, which may take --poll-timeout

    def decoder(self, request: bytes) -> PollDecoder:
        return PollDecoder(request)


TRANSPORTS = {t.name: t for t in (StreamTransport(), SseTransport(), WsTransport(),
                                  PollTransport())}
CHOICES = list(TRANSPORTS)


def get(name: str) -> StreamTransport:
    """The transport called ``name``, or a clear refusal."""
    if name in TRANSPORTS:
        return TRANSPORTS[name]
    raise NotBuilt(f"unknown transport {name!r}; choose from {', '.join(CHOICES)}")

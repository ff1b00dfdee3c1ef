"""Which comet transport the flood speaks (``--transport``): the request and the body decoder.

A transport is what differs between ``/test/`` streams, SSE, long-poll and WebSocket
for the flood: the request bytes, the head it accepts, and a per-connection decoder
with ``feed(bytes) -> [message, ...]``, ``done`` and ``mid_chunk``. The connecting and
reading code is the same for all. Only ``stream`` exists today; adding another is one
class here plus its decoder module, and one line in :data:`TRANSPORTS`.
"""

from __future__ import annotations

from flood import head
from flood.chunked import ChunkedDecoder
from flood.urls import Target

#: Transports the server will have but the flood does not speak yet, and the endpoint each needs.
NOT_BUILT = {
    "sse": "Server-Sent Events on /events/<id>",
    "poll": "long-poll on /poll/<id>",
    "ws": "WebSocket on /ws/<id>",
}


class NotBuilt(ValueError):
    """Asked for a transport the flood does not speak yet."""


class StreamTransport:
    """The seed's ``GET /test/<id>``: a chunked body, each chunk one message or tick."""

    name = "stream"

    def request(self, target: Target) -> bytes:
        return head.request(target.host, target.port, target.path)

    def check(self, response: head.Head) -> None:
        head.check_stream(response)

    def decoder(self) -> ChunkedDecoder:
        return ChunkedDecoder()


TRANSPORTS = {"stream": StreamTransport()}
CHOICES = list(TRANSPORTS) + list(NOT_BUILT)


def get(name: str) -> StreamTransport:
    """The transport called ``name``; a clear refusal for those not built yet."""
    if name in TRANSPORTS:
        return TRANSPORTS[name]
    if name in NOT_BUILT:
        raise NotBuilt(f"--transport {name} ({NOT_BUILT[name]}) is not built yet; "
                       f"only {', '.join(TRANSPORTS)} works for now")
    raise NotBuilt(f"unknown transport {name!r}; choose from {', '.join(CHOICES)}")

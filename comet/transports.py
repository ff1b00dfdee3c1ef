"""How a message becomes bytes on the wire, one pure function per frame.

Nothing here touches a socket or knows about routing: each function takes a
message (bytes) or a count and returns the bytes a transport sends, so framing
is tested without a server (the h11 way).

``/test/`` (the seed's chunked stream) sends lines; the HTTP server wraps each
in a chunk of its own.
"""

from __future__ import annotations

#: Content type of the seed's /test/ stream.
TEST_CONTENT_TYPE = "text/html; charset=utf-8"


def test_welcome(id: str) -> bytes:
    """The first chunk of /test/<id>, sent at once."""
    return f"comet welcomes you! Your Id: {id}\n".encode()


def test_tick(n: int, id: str) -> bytes:
    """The n-th tick chunk of /test/<id> (n counts from 1, as in the seed)."""
    return f"Chunk {n} for id {id}\n".encode()


def test_message(message: bytes) -> bytes:
    """A routed message on /test/ (the seed's part 2: ``Recvd msg``)."""
    return b"Recvd msg: " + message + b"\n"


def test_farewell(reason: str) -> bytes:
    """The last data chunk of a stream the server ends on purpose (shutdown)."""
    return f"Bye: {reason}\n".encode()

"""Why a connection ended, as a value: a close code, a reason, and whether it flushes.

Centrifuge's ``Disconnect`` values are the model: the end of a connection is
data that every part reads the same way, not a string compared by equality.
The lives choose the value, the wire turns it into bytes (a ``/test/``
farewell chunk, a WebSocket close frame with :attr:`End.code`), and the hub
counts ends by :attr:`End.reason` in ``/stats``.

``flush`` says whether what is queued still goes out before the end (a
server shutdown, an answered poll) or is discarded (a slow consumer, a client
that is gone). Only an end that flushes gets a farewell on a stream; a
WebSocket gets a close frame whenever ``code`` is set and its socket still
takes one.
"""

from __future__ import annotations

from typing import NamedTuple


class End(NamedTuple):
    """One way a connection ends."""

    #: the WebSocket close code (RFC 6455, 7.4.1) that says it; None: no close frame is sent
    code: int | None
    #: short words for logs, ``/stats`` and the close frame or farewell
    reason: str
    #: True: what is queued goes out first, then a farewell; False: it is discarded
    flush: bool
    #: the SSE event that tells an EventSource client why (its ``event:`` name), or None
    event: str | None = None
    #: the client is to come back, and many end at once: an SSE stream's last bytes set
    #: its ``retry:`` to a random delay around --sse-retry, so they do not all come back
    #: in the same instant (a WebSocket's close code already says "come back")
    spread: bool = False


#: the server stops (SIGTERM, a rolling restart): its clients are to come back, to a
#: sibling worker or to the server that replaces it; WebSockets close with 1012 (service
#: restart), streams say goodbye, SSE with a jittered ``retry:``
SHUTDOWN = End(1012, "server shutting down", True, spread=True)
#: a long-poll got its answer (or its timeout): it ends as a normal response
ANSWERED = End(1000, "answered", True)
#: its queue filled up: the reader is too slow for what it is sent
SLOW_CONSUMER = End(1008, "slow consumer", False)
#: one write blocked past --write-timeout
WRITE_TIMEOUT = End(1008, "write timed out", False)
#: the peer went away (EOF, reset, broken pipe)
CLIENT_GONE = End(None, "client gone", False)
#: the client sent a WebSocket close frame (answered by the reader, so no second frame)
CLIENT_CLOSED = End(None, "client closed", False)
#: WebSocket clients only listen here; a binary message is refused
BINARY_FRAME = End(1003, "text frames only", False)
#: a client WebSocket message over the reader's limit, refused from its header
MESSAGE_TOO_BIG = End(1009, "message too big", False)
#: a WebSocket frame that breaks RFC 6455 (reserved bits, long control frame, bad opcode)
PROTOCOL_ERROR = End(1002, "protocol error", False)
#: the message broker (Redis) cannot be reached: the client retries later
BROKER_DOWN = End(1013, "message broker unavailable", True, spread=True)
#: the subscriber's token ran out (its exp, plus --token-leeway): the client reconnects
#: with a fresh one. 4001 is in the private range (RFC 6455 7.4.2): a client can tell it
#: from any protocol-level close; SSE clients get an ``expired`` event.
TOKEN_EXPIRED = End(4001, "token expired", True, "expired")
#: history no longer covers what the connection missed (Redis was away too long, or lost
#: it): the client resumes, and its resume tells it what is missing
HISTORY_LOST = End(1012, "history lost, resume", True, spread=True)

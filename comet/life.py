"""What both lives of a connection share: the record the hub and router see.

A connection lives one of two lives (docs/design.rst, "Lives"): the plain life
(:mod:`comet.plain`, a greenlet per connection sleeping in its response
iterator: the design card's shape, what any WSGI server runs) or the sleeping
life (:mod:`comet.sleeping`, a small record and no greenlet while idle). Both
are a :class:`Life`: the same slots for the router (``ids``), the hub
(``transport``, ``ended``), the replay's dedupe (``seen``), and the same
reading of what a WebSocket client sends (:func:`client_answer`), the way
python-socketio's two servers share one base.

Neither life reaches routing but through the hub (``hub.open``, ``hub.close``,
``hub.drop``); the router's ``deliver`` is each life's own.
"""

from __future__ import annotations

import logging

from comet import ends, limits, wire, wsreader
from comet.ends import End

log = logging.getLogger(__name__)


class Life:
    """The part of a connection record that does not depend on how it waits."""

    __slots__ = (
        "ids",      #: ids logged in as (owned by the router)
        "hub",      #: the server's Hub: open, close, drop, settings, timer wheel (shared)
        "framing",  #: the transport's Framing (shared by all its connections)
        "seen",     #: seq of the newest message written (replay dedupe), or a Cursor
        "ended",    #: None while live, else the End that ends it
        "client",   #: whom it counts against for --max-per-ip (shared str), or None
    )

    def __init__(self, hub, framing) -> None:
        self.ids: tuple[str, ...] = ()
        self.hub = hub
        self.framing = framing
        self.seen = 0
        self.ended: End | None = None
        self.client: str | None = None

    @property
    def transport(self) -> str:
        """The transport's name, as ``/stats`` counts connections."""
        return self.framing.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {','.join(self.ids)} on {self.transport}>"

    def fresh(self, message):
        """What to write of a message this connection has not written yet (a replay may
        have), else None: the message itself, or where positions are per stream (a
        :class:`~comet.broker.cursor.Cursor` in ``seen``) and the client sees ids, the
        message with this connection's position as its id."""
        seen = self.seen
        if seen.__class__ is int:
            if message.seq <= seen:
                return None
            self.seen = message.seq
            return message
        if not seen.advance(message):
            return None
        return seen.positioned(message) if self.framing.shows_id else message

    def position(self, fallback: str | None) -> str:
        """Where a client that got all this connection wrote goes on from: ``fallback``
        (one id for every stream), or this connection's own per stream position."""
        return fallback if fallback is not None else self.seen.text()


def client_answer(event: wsreader.Event) -> tuple[bytes | None, End | None]:
    """What a WebSocket client's event asks of the server: bytes to send, and an end or None.

    A ping gets its pong; a close frame gets the closing handshake's reply and
    ends the connection; a text message is read and ignored (clients only
    listen here); a binary message ends it with 1003.
    """
    if isinstance(event, wsreader.Ping):
        return wire.ws_frame(wire.WS_PONG, event.payload), None
    if isinstance(event, wsreader.Close):
        return wire.ws_close_reply(event.code), ends.CLIENT_CLOSED
    if isinstance(event, wsreader.Message) and not event.text:
        return None, ends.BINARY_FRAME
    return None, None


def reader_failure(conn: Life, exc: Exception) -> End:
    """The end a broken client frame means (the reader raised ``exc``), logged: a frame
    over the size limit as a refusal (counted, once per burst), others each time."""
    if isinstance(exc, wsreader.MessageTooBig):
        conn.hub.refuse(limits.FRAME_TOO_BIG, "closing %r: %s", conn, exc)
        return ends.MESSAGE_TOO_BIG
    log.info("closing %r: %s", conn, exc)
    return ends.PROTOCOL_ERROR

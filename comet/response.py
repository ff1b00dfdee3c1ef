"""What the app returns for a subscriber, and the seam where a connection may leave its greenlet.

A ``/test/``, ``/events/``, ``/poll/`` or ``/ws/`` request gets one of these
WSGI bodies. Each can live either life (docs/design.rst, "Lives"):

* **iterated**, as any WSGI server does, it runs the plain life
  (:mod:`comet.plain`): the request's greenlet sleeps in it between pieces;
* **hibernated**, by comet's own handler (``--hibernate on``), it logs in a
  sleeping record (:mod:`comet.sleeping`) and hands back the first bytes::

      conn, first = response.hibernate()   # conn None: answered, nothing waits
      ... the server writes ``first`` after the headers, lets go of the socket ...
      conn.wake(sock, resume)               # resume: a long-poll's next request

What to send first (the opening, a ``missed`` notice, the replay) is decided
here, once, for both lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from comet import plain, sleeping, wire
from comet.broker import Replay
from comet.ends import ANSWERED, WRITE_TIMEOUT
from comet.framing import Framing
from comet.hub import Hub
from comet.life import Life


class Response:
    """A subscriber's WSGI body; subclasses say how each transport begins and waits."""

    #: one per request, gone once the connection sleeps or ends: slots keep it small
    __slots__ = ("hub", "framing", "ids", "last", "resume", "sock", "expires", "client",
                 "_conn", "_life")

    def __init__(self, hub: Hub, framing: Framing, ids: list[str], last: str | None = None,
                 resume: bool = False, sock: Any = None, expires: float | None = None,
                 client: str | None = None) -> None:
        self.hub = hub
        self.framing = framing
        self.ids = ids
        self.last = last
        self.resume = resume
        #: the client socket a drop may shut down (plain life), when the server exposes it
        self.sock = sock
        #: when the subscriber's token runs out (epoch seconds), or None: no token
        self.expires = expires
        #: whom the connection counts against (--max-per-ip), admitted for it; or None
        self.client = client
        self._conn: plain.PlainConnection | None = None
        self._life: Iterator[bytes] | None = None

    def begin(self, conn: Life) -> bytes:
        """Log ``conn`` in; the first bytes of its body: opening, missed notice, replay."""
        return opening(self.framing, self.ids[0], self._open(conn), self.last)

    def _open(self, conn: Life) -> Replay | None:
        """Log ``conn`` in, and have it end when its token runs out (if it came with one)."""
        replay = self.hub.open(conn, self.ids, self.last, self.resume, self.client)
        if self.expires is not None:
            self.hub.expire_at(conn, self.expires)
        return replay

    def _plain(self) -> plain.PlainConnection:
        self._conn = plain.PlainConnection(self.hub, self.framing, self.sock)
        return self._conn

    def close(self) -> None:
        """The server is done with the body: end the plain life (logs out in its finally)."""
        if self._life is not None:
            self._life.close()

    def write_timed_out(self) -> None:
        """The server's write to this client blocked past --write-timeout (plain life)."""
        if self._conn is not None:
            self.hub.drop(self._conn, WRITE_TIMEOUT)


class StreamResponse(Response):
    """``/test/`` (the seed's chunked lines) and ``/events/`` (Server-Sent Events)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        self._life = plain.stream_life(self._plain(), self.begin)
        return self._life

    def hibernate(self) -> tuple[sleeping.SleepingConnection, bytes]:
        conn = sleeping.SleepingConnection(self.hub, self.framing)
        return conn, self.begin(conn)


class PollResponse(Response):
    """``/poll/<id>?since=``: answered at once from history, or by the next message."""

    __slots__ = ("position",)

    def __init__(self, hub: Hub, framing: Framing, ids: list[str], since: str | None,
                 expires: float | None = None, client: str | None = None) -> None:
        super().__init__(hub, framing, ids, since, resume=since is not None, expires=expires,
                         client=client)
        #: where an empty answer tells the client to go on from: nothing is lost between
        #: polls (None where positions are per stream: each connection has its own)
        self.position = hub.position()

    def begin(self, conn: Life) -> bytes | None:
        """Log in; the answer if history has one now (messages after ``since``, or a gap)."""
        replay = self._open(conn)
        if replay is None or not (replay.messages or replay.missed):
            return None
        last = replay.messages[-1].id if replay.messages else replay.start
        return wire.poll_answer(replay.messages, last, replay.missed)

    def __iter__(self) -> Iterator[bytes]:
        yield plain.poll_life(self._plain(), self.begin, self.position)

    def hibernate(self) -> tuple[sleeping.SleepingPoll | None, bytes]:
        conn = sleeping.SleepingPoll(self.hub, self.framing, self.position)
        answer = self.begin(conn)
        if answer is None:
            return conn, b""
        conn.finish(ANSWERED)  # answered before it slept: nothing waits
        return None, answer


class WebSocketResponse(Response):
    """``/ws/<id>`` after gevent-websocket's handshake: messages as text frames."""

    __slots__ = ("ws",)

    def __init__(self, hub: Hub, framing: Framing, ids: list[str], ws,
                 expires: float | None = None, client: str | None = None) -> None:
        super().__init__(hub, framing, ids, expires=expires, client=client)
        #: gevent-websocket's connection object (its raw reads and writes only)
        self.ws = ws

    def __iter__(self) -> Iterator[bytes]:
        plain.websocket_life(self._plain(), self.begin, self.ws)
        return iter(())

    def hibernate(self) -> tuple[sleeping.SleepingWebSocket, bytes]:
        conn = sleeping.SleepingWebSocket(self.hub, self.framing)
        self.begin(conn)
        return conn, b""


def opening(framing: Framing, id: str, replay: Replay | None, last: str | None) -> bytes:
    """The first body bytes: the transport's opening, then what a resuming client missed."""
    first = [framing.opening(id)]
    if replay is not None:
        if replay.missed and framing.missed is not None:
            first.append(framing.missed(replay.start, last))
        first.extend(framing.message(m) for m in replay.messages)
    return b"".join(first)

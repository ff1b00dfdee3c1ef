"""``GET /poll/<id>?since=<msg id>``: one answer per request, for clients behind
proxies that buffer streams.

With ``since``, messages kept after it answer at once; otherwise the request
waits up to ``--poll-timeout`` for the next one. ``last`` in the answer is what
the client sends as ``since`` next: the newest message it got, or, when none
came, the history's position at the start of the wait, so a client looping on
``last`` loses nothing between polls (the history covers the gap).

As for streams, the app returns a :class:`PollResponse`: iterated, the wait
holds the request's greenlet; comet's handler hibernates it instead
(:class:`SleepingPoll`), and the answer hands the socket back to the HTTP
server for the next request.
"""

from __future__ import annotations

from collections.abc import Iterator

from comet import transports
from comet.connection import QueuedConnection
from comet.framing import framing_for
from comet.hibernate import SleepingConnection
from comet.subscriptions import Subscriptions


def poll_once(subs: Subscriptions, conn: QueuedConnection, ids: list[str],
              since: str | None) -> bytes:
    """Wait for and return the JSON answer of one long-poll."""
    position = subs.history.position()
    replay = subs.open(conn, ids, since, resume=since is not None)
    try:
        if replay is not None and (replay.messages or replay.missed):
            last = replay.messages[-1].id if replay.messages else replay.start
            return transports.poll_answer(replay.messages, last, replay.missed)
        conn.wait(subs.settings.poll_timeout)
        messages = conn.take()
        last = messages[-1].id if messages else position
        return transports.poll_answer(messages, last)
    finally:
        subs.close(conn)


class SleepingPoll(SleepingConnection):
    """A long-poll waiting with no greenlet: the first message, or the timeout, answers it.

    The answer is one chunk of JSON and the last chunk; then the socket goes
    back to the HTTP server for the client's next request (keep-alive), as if
    the request had been answered in its own greenlet.
    """

    __slots__ = ("resume", "position")

    def __init__(self, subs: Subscriptions, framing, position: str) -> None:
        super().__init__(subs, framing)
        #: where an empty answer tells the client to go on from
        self.position = position
        #: hands the socket back to the HTTP server for the next request
        self.resume = None

    def deliver(self, message) -> bool:
        if self.ended is not None or message.seq <= self.seen:
            return True
        self._answer([message], message.id)
        return True

    def on_timer(self) -> None:
        if self.sock is not None and self.ended is None:
            self._answer([], self.position)

    def _answer(self, messages: list, last: str, keep_alive: bool = True) -> None:
        self.ended = "answered"
        self.subs.wheel.cancel(self)
        body = transports.poll_answer(messages, last)
        self._write(transports.chunk(body) + transports.LAST_CHUNK)
        if self.pending is None and self.sock is not None:
            if not keep_alive:
                self._finish("answered")
                return
            self.subs.close(self)  # logged out: this poll is done
            sock, self.sock = self.sock, None
            self.resume(sock)  # next request on this connection, in a new greenlet
        # else: the write failed (_finish logged it out), or the writer drains the
        # answer to a slow reader and then _finish closes and logs it out

    def end(self, reason: str) -> None:
        """Server shutdown: answer now, empty, so the client polls the next server."""
        if self.ended is None:
            self._answer([], self.position, keep_alive=False)


class PollResponse:
    """The WSGI body of a long-poll; comet's handler hibernates the wait instead.

    Iterated (any WSGI server), it waits in :func:`poll_once` in the request's
    greenlet. :meth:`hibernate` answers at once when the history already has
    something, else returns a :class:`SleepingPoll` that waits with no greenlet.
    """

    def __init__(self, subs: Subscriptions, ids: list[str], since: str | None) -> None:
        self.subs, self.ids, self.since = subs, ids, since

    def __iter__(self) -> Iterator[bytes]:
        conn = QueuedConnection("poll", self.subs.settings.queue_limit)
        yield poll_once(self.subs, conn, self.ids, self.since)

    def hibernate(self) -> tuple[SleepingPoll | None, bytes]:
        conn = SleepingPoll(self.subs, framing_for("poll", self.subs.settings),
                            self.subs.history.position())
        replay = self.subs.open(conn, self.ids, self.since, resume=self.since is not None)
        if replay is not None and (replay.messages or replay.missed):
            self.subs.close(conn)
            conn.pending = None
            last = replay.messages[-1].id if replay.messages else replay.start
            return None, transports.poll_answer(replay.messages, last, replay.missed)
        return conn, b""

    def awake(self, conn: SleepingPoll, sock, resume) -> None:
        conn.resume = resume
        conn.awake(sock)  # waits on the timer wheel for --poll-timeout

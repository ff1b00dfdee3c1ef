"""The hub: the one owner of a server process's shared state.

Every connection opens and closes here, every publish goes through here, and
every counter in ``/stats`` is written here and nowhere else. The hub holds:

* the **router** (:mod:`comet.router`): which connections of this process
  are logged in as which ids, a pure data structure;
* the **broker** (:mod:`comet.broker`): message ids, history, and which
  process gets what; the hub subscribes an id when the router gets its first
  connection and unsubscribes it when the last one leaves, and the broker
  calls :meth:`Hub.deliver` for each message to deliver here;
* the **counters** (:class:`~comet.stats.Counters`), admission
  (:meth:`Hub.admit`), and the timer wheel of sleeping connections.

Three things hold whatever the transport and the life:

* login and the history replay happen in one greenlet turn, with nothing in
  between that could yield: a message accepted meanwhile is either in the
  replay or in the connection's queue (the connection's ``seen`` drops the
  second copy), never in neither;
* every message is delivered as an :class:`Outgoing`, whose bytes per
  transport the hub builds once per fan-out and lets go with it;
* a connection the hub gives up on (``drop``) is logged out first and counted
  once, by the :class:`~comet.ends.End` it ended with.

Nothing here knows HTTP, sockets or a transport's framing beyond asking a
:class:`~comet.framing.Framing` for bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from comet import ends
from comet.broker import Broker, Message, Replay
from comet.broker.memory import MemoryBroker, MemoryHistory
from comet.config import Settings
from comet.ends import End
from comet.release import MemoryReleaser
from comet.router import Router
from comet.stats import Counters
from comet.timerwheel import TimerWheel

log = logging.getLogger(__name__)

#: seconds a refused client is told to wait (Retry-After)
RETRY_AFTER = 5


class Refused(Exception):
    """No room for another connection now: answered 503 with ``Retry-After``."""

    def __init__(self, reason: str, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Outgoing:
    """A message on its way to the connections: its fields, and its bytes per transport.

    Built by the hub once per delivery, so a broadcast frames each message
    once per transport, not once per connection; it goes when the fan-out
    and the queues holding it are done (the history keeps the Message).
    """

    __slots__ = ("id", "data", "seq", "_frames")

    def __init__(self, message: Message) -> None:
        self.id = message.id
        self.data = message.data
        self.seq = message.seq
        self._frames: dict[str, bytes] | None = None

    def framed(self, framing) -> bytes:
        """The socket bytes of this message on ``framing``'s transport, made once."""
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        data = frames.get(framing.name)
        if data is None:
            data = frames[framing.name] = framing.wire(framing.message(self))
        return data


class Hub:
    """Router, broker, counters, admission and the timer wheel of one server process."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.router = Router()
        self.broker = broker if broker is not None else MemoryBroker(MemoryHistory(
            settings.history, settings.history_ttl, settings.history_memory))
        self.broker.start(self.deliver)
        self.counters = Counters()
        #: ticks, heartbeats and poll timeouts of sleeping connections
        self.wheel = TimerWheel()
        #: gives freed memory back once most connections have gone
        self.releaser = MemoryReleaser(lambda: self.counters.held, compact=self.router.compact)
        self.accepting = True

    # -- admission ------------------------------------------------------------------

    def room(self) -> str | None:
        """Why no connection can be taken now, or None; asks only, counts nothing."""
        if not self.accepting:
            return "server is shutting down"
        if self.counters.held >= self.settings.max_connections:
            return f"at capacity ({self.settings.max_connections} connections)"
        return None

    def admit(self) -> None:
        """Take one more connection, or raise :class:`Refused` (counted)."""
        reason = self.room()
        if reason is not None:
            self.counters.refused += 1
            raise Refused(reason)

    # -- a connection's life ----------------------------------------------------------

    def open(self, conn, ids: Sequence[str], last: str | None = None,
             resume: bool = False) -> Replay | None:
        """Log ``conn`` in as ``ids``; with ``resume``, also what came after ``last``."""
        login = self.router.login
        new = [id for id in ids if login(id, conn)]
        if new:
            self.broker.subscribe(new)
        counters = self.counters
        counters.open[conn.transport] += 1
        counters.accepted += 1
        self.releaser.observe(counters.held)
        if not resume:
            return None
        replay = self.broker.replay(ids, last)
        if replay.messages:
            conn.seen = replay.messages[-1].seq
        return replay

    def close(self, conn) -> None:
        """``conn`` has ended (``conn.ended``, or the client went): log out, count its end."""
        self._logout(conn)
        end = conn.ended or ends.CLIENT_GONE
        counters = self.counters
        counters.open[conn.transport] -= 1
        counters.ends[end.reason] += 1
        self.releaser.observe(counters.held)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("closed %r: %s", conn, end.reason)

    def drop(self, conn, end: End, lost: int = 0) -> None:
        """Give up on ``conn`` (too slow): log it out now, end it, count what is lost."""
        if conn.ids:
            log.warning("dropping %s %s on %s", end.reason, ",".join(conn.ids), conn.transport)
            self.counters.drops[end.reason] += 1
        self._logout(conn)
        self.counters.messages_dropped += lost + conn.drop(end)

    def _logout(self, conn) -> None:
        gone = self.router.logout(conn)
        if gone:
            self.broker.unsubscribe(gone)

    # -- messages ---------------------------------------------------------------------

    def publish(self, id: str, data: bytes) -> tuple[Message, int | None]:
        """To every connection of ``id``, wherever it is: the message and local deliveries."""
        self.counters.messages_in += 1
        return self.broker.publish(id, data)

    def broadcast(self, data: bytes) -> tuple[Message, int | None]:
        """To every connection, as :meth:`publish`."""
        self.counters.messages_in += 1
        return self.broker.broadcast(data)

    def deliver(self, id: str | None, message: Message) -> int:
        """The broker's call: ``message`` to this process's connections of ``id`` (None: all)."""
        out = Outgoing(message)
        delivered, slow = (self.router.broadcast(out) if id is None
                           else self.router.send(id, out))
        self.counters.messages_out += delivered
        for conn in slow:
            self.drop(conn, ends.SLOW_CONSUMER, lost=1)
        return delivered

    def position(self) -> str:
        """The id a client that has seen everything so far would hold (long-poll's ``last``)."""
        return self.broker.position()

    # -- the server's life ------------------------------------------------------------

    def shutdown(self, end: End = ends.SHUTDOWN) -> int:
        """Refuse new connections and end every open one cleanly; returns how many."""
        self.accepting = False
        conns = list(self.router.all_connections())
        for conn in conns:
            self._logout(conn)
            try:
                conn.end(end)
            except Exception:  # one connection's failure must not keep the others open
                log.exception("ending %r failed", conn)
        return len(conns)

    def snapshot(self) -> dict:
        """``/stats``: the counters, ids held and sleeping timers."""
        return self.counters.snapshot(self.router.ids, len(self.wheel))

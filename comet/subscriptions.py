"""Where a connection meets the router, the history and the counters.

Every transport opens and closes its connections here, and publishing goes
through here, so that three things hold whatever the transport:

* login and the history replay happen in one greenlet turn, with nothing in
  between that could yield: a message accepted meanwhile is either in the
  replay or in the connection's queue, never in both and never in neither;
* every accepted message gets its id from the history before the router
  delivers it;
* /stats counts each open connection under its transport.
"""

from __future__ import annotations

import logging

from comet.config import Settings
from comet.framing import SHUTDOWN_REASON
from comet.history import MemoryHistory, Message, Replay
from comet.release import MemoryReleaser
from comet.router import Router
from comet.stats import Stats
from comet.timerwheel import TimerWheel

log = logging.getLogger(__name__)



class Subscriptions:
    """The server's shared state: router, history, stats, and whether it still accepts."""

    def __init__(self, settings: Settings, router: Router | None = None,
                 history: MemoryHistory | None = None) -> None:
        self.settings = settings
        self.router = router if router is not None else Router()
        self.history = history if history is not None else MemoryHistory(
            settings.history, settings.history_ttl, settings.history_memory)
        #: ticks and heartbeats of hibernated connections
        self.wheel = TimerWheel()
        self.stats = Stats(self.router, self.wheel)
        #: gives freed memory back once most connections have gone
        self.releaser = MemoryReleaser(lambda: self.router.connections,
                                       compact=self.router.compact)
        self.accepting = True

    def has_room(self) -> bool:
        if self.router.connections < self.settings.max_connections:
            return True
        self.stats.refused += 1
        return False

    def open(self, conn, ids: list[str], last: str | None = None,
             resume: bool = False) -> Replay | None:
        """Log ``conn`` in as ``ids``; with ``resume``, also what came after ``last``."""
        for id in ids:
            self.router.login(id, conn)
        self.stats.open[conn.transport] += 1
        self.stats.accepted += 1
        self.releaser.observe(self.router.connections)
        log.debug("login %s on %s", ",".join(ids), conn.transport)
        if not resume:
            return None
        replay = self.history.since(ids, last)
        if replay.messages:
            conn.seen = replay.messages[-1].seq
        return replay

    def close(self, conn) -> None:
        ids = ",".join(conn.ids)
        self.router.logout(conn)
        self.stats.open[conn.transport] -= 1
        self.releaser.observe(self.router.connections)
        log.debug("logout %s from %s (%s)", ids, conn.transport, conn.ended or "client gone")

    def publish(self, id: str, data: bytes) -> tuple[Message, int]:
        message = self.history.publish(id, data)
        delivered = self.router.send(id, message)
        message.frames = None  # framed bytes serve one fan-out; the history keeps the data
        return message, delivered

    def broadcast(self, data: bytes) -> tuple[Message, int]:
        message = self.history.publish_all(data)
        delivered = self.router.broadcast(message)
        message.frames = None
        return message, delivered

    def shutdown(self, reason: str = SHUTDOWN_REASON) -> int:
        """Refuse new connections and end every open one cleanly; returns how many."""
        self.accepting = False
        conns = list(self.router.all_connections())
        for conn in conns:
            self.router.logout(conn)
            try:
                conn.end(reason)
            except Exception:  # one connection's failure must not keep the others open
                log.exception("ending %r failed", conn)
        return len(conns)

"""The message router: which connections are logged in as which user ids.

This is the series' ``router`` (part 2): ``login(id, conn)``, ``logout(conn)``,
``send(id, msg)``, plus ``broadcast(msg)``. It is a plain data structure and
knows nothing of HTTP, sockets or greenlets.

The connection interface
------------------------
A connection is any object with:

``ids``
    a tuple of the ids it is logged in as; the router owns this attribute.
``deliver(message) -> bool``
    accept a message without blocking. ``False`` means the connection cannot
    take it: its bounded queue is full (a slow consumer, which the router
    drops), or it found its peer gone and logged itself out (its ``ids`` are
    empty, and the router leaves it be). It must never wait:
    the router calls it for thousands of connections in one loop, and whether
    a greenlet, a non-blocking socket write, or nothing at all stands behind
    the connection is the connection's business (DESIGN.md, "Memory: the plan").
``drop(reason) -> int``
    the router gave up on it; the connection ends itself (closes its stream)
    and returns how many queued messages it discarded.

Memory: an id with one connection stores the connection itself, not a set
(most ids have exactly one), and a connection keeps its ids in a tuple; a
broadcast reaches each connection once through the first of its ids, so no
separate registry of all connections is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Connection(Protocol):
    ids: tuple[str, ...]

    def deliver(self, message: Any) -> bool: ...

    def drop(self, reason: str) -> int: ...


class Router:
    """Ids <-> connections, with counters for /stats."""

    def __init__(self) -> None:
        #: id -> a connection, or a set of them when the id has several
        self._by_id: dict[str, Any] = {}
        #: connections logged in (each counted once, whatever its number of ids)
        self.connections = 0
        #: messages accepted by send and broadcast
        self.messages_in = 0
        #: deliveries made (one message to three connections: three)
        self.messages_out = 0
        #: connections dropped because their queue was full (slow consumers)
        self.slow_consumers = 0
        #: messages lost with them: the one that found the queue full and those queued
        self.messages_dropped = 0

    # -- membership ---------------------------------------------------------

    def login(self, id: str, conn: Connection) -> None:
        """Log ``conn`` in as ``id`` too; logging in twice as the same id is a no-op."""
        if id in conn.ids:
            return
        if not conn.ids:
            self.connections += 1
        conn.ids = (*conn.ids, id)
        held = self._by_id.get(id)
        if held is None:
            self._by_id[id] = conn
        elif isinstance(held, set):
            held.add(conn)
        else:
            self._by_id[id] = {held, conn}

    def logout(self, conn: Connection) -> None:
        """Forget ``conn`` under every id; safe to call twice."""
        if not conn.ids:
            return
        for id in conn.ids:
            held = self._by_id.get(id)
            if held is conn:
                del self._by_id[id]
            elif isinstance(held, set):
                held.discard(conn)
                if len(held) == 1:
                    self._by_id[id] = held.pop()
                elif not held:
                    del self._by_id[id]
        conn.ids = ()
        self.connections -= 1

    def connections_of(self, id: str) -> tuple[Connection, ...]:
        held = self._by_id.get(id)
        if held is None:
            return ()
        if isinstance(held, set):
            return tuple(held)
        return (held,)

    def all_connections(self) -> Iterator[Connection]:
        """Every logged-in connection once (through the first of its ids)."""
        for id, held in list(self._by_id.items()):
            for conn in (held if isinstance(held, set) else (held,)):
                if conn.ids and conn.ids[0] == id:
                    yield conn

    def compact(self) -> None:
        """Rebuild the id table at its present size: a dict never shrinks as keys leave."""
        self._by_id = dict(self._by_id)

    @property
    def ids(self) -> int:
        """How many distinct ids have at least one connection."""
        return len(self._by_id)

    # -- delivery -----------------------------------------------------------

    def send(self, id: str, message: Any) -> int:
        """Deliver to every connection logged in as ``id``; returns how many took it."""
        self.messages_in += 1
        return self._deliver_all(self.connections_of(id), message)

    def broadcast(self, message: Any) -> int:
        """Deliver to every connection; returns how many took it."""
        self.messages_in += 1
        return self._deliver_all(list(self.all_connections()), message)

    def _deliver_all(self, conns: Any, message: Any) -> int:
        delivered = 0
        for conn in conns:
            if conn.deliver(message):
                delivered += 1
            elif conn.ids:  # still logged in: its queue is full
                self._drop_slow(conn)
            # else: it found its peer gone and logged itself out
        self.messages_out += delivered
        return delivered

    def _drop_slow(self, conn: Connection) -> None:
        self.slow_consumers += 1
        log.warning("dropping slow consumer %s: its queue is full", ",".join(conn.ids))
        self.logout(conn)
        self.messages_dropped += 1 + conn.drop("slow consumer")

"""The message router: which connections of this process are logged in as which user ids.

This is the series' ``router`` (part 2): ``login(id, conn)``, ``logout(conn)``,
``send(id, msg)``, plus ``broadcast(msg)``. It is a plain data structure: it
knows nothing of HTTP, sockets, greenlets or other processes, and it counts
nothing but its own membership; the hub (:mod:`comet.hub`) owns every counter
and decides what happens to a connection that cannot take a message.

The connection interface
------------------------
A connection is any object with:

``ids``
    a tuple of the ids it is logged in as; the router owns this attribute.
``transport``
    a short label (the transport's name) the router counts its deliveries by;
    read at login and logout, and for a connection that refuses a message.
``deliver(message) -> bool``
    accept a message without blocking. ``False`` means the connection cannot
    take it: its bounded queue is full (a slow consumer: :meth:`Router.send`
    returns it to the caller, still logged in), or it found its peer gone and
    logged itself out (its ``ids`` are empty, and it is not returned). It must
    never wait: the router calls it for thousands of connections in one loop,
    and whether a greenlet, a non-blocking socket write, or nothing at all
    stands behind the connection is the connection's business.

Memory: an id with one connection stores the connection itself, not a set
(most ids have exactly one), and a connection keeps its ids in a tuple; a
broadcast reaches each connection once through the first of its ids, so no
separate registry of all connections is kept.

Deliveries by transport cost nothing per delivery: the router keeps how many
logged-in connections each transport has (one update a login and a logout),
so a broadcast's deliveries by transport are those counts, taken before its
loop, less the connections that refused the message; a send counts the few
connections of its id. The loop itself does what it did before: one
``deliver`` call and one addition per connection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol


class Connection(Protocol):
    ids: tuple[str, ...]
    transport: str

    def deliver(self, message: Any) -> bool: ...


class Fanout(NamedTuple):
    """What one delivery to many connections came to."""

    #: how many connections took the message
    delivered: int
    #: those still logged in that could not take it (too slow: the caller decides)
    refused: list
    #: ``delivered``, by the connections' transport (sums to ``delivered``)
    by_transport: dict[str, int]


class Router:
    """Ids <-> connections of this process."""

    def __init__(self) -> None:
        #: id -> a connection, or a set of them when the id has several
        self._by_id: dict[str, Any] = {}
        #: logged-in connections by transport (what a broadcast offers each one)
        self._by_transport: Counter = Counter()

    # -- membership ---------------------------------------------------------

    def login(self, id: str, conn: Connection) -> bool:
        """Log ``conn`` in as ``id`` too; True when ``id`` had no connection here before.

        Logging in twice as the same id is a no-op (and returns False).
        """
        if id in conn.ids:
            return False
        if not conn.ids:
            self._by_transport[conn.transport] += 1
        conn.ids = (*conn.ids, id)
        held = self._by_id.get(id)
        if held is None:
            self._by_id[id] = conn
            return True
        if isinstance(held, set):
            held.add(conn)
        else:
            self._by_id[id] = {held, conn}
        return False

    def logout(self, conn: Connection) -> list[str]:
        """Forget ``conn`` under every id; the ids left with no connection. Safe twice."""
        if conn.ids:
            self._by_transport[conn.transport] -= 1
        gone = []
        for id in conn.ids:
            held = self._by_id.get(id)
            if held is conn:
                del self._by_id[id]
                gone.append(id)
            elif isinstance(held, set):
                held.discard(conn)
                if len(held) == 1:
                    self._by_id[id] = held.pop()
                elif not held:
                    del self._by_id[id]
                    gone.append(id)
        conn.ids = ()
        return gone

    def connections_of(self, id: str) -> tuple[Connection, ...]:
        held = self._by_id.get(id)
        if held is None:
            return ()
        if isinstance(held, set):
            return tuple(held)
        return (held,)

    def all_connections(self) -> list[Connection]:
        """Every logged-in connection once (through the first of its ids), as a list:
        what a broadcast loops over, and the table may change while it does.

        Built in one pass with no generator: at a million held this runs once per
        broadcast in each worker, over its ~18,000 connections.
        """
        conns: list[Connection] = []
        append = conns.append
        for id, held in self._by_id.items():
            if held.__class__ is set:
                conns.extend([conn for conn in held if conn.ids and conn.ids[0] == id])
            elif held.ids and held.ids[0] == id:
                append(held)
        return conns

    def compact(self) -> None:
        """Rebuild the id table at its present size: a dict never shrinks as keys leave."""
        self._by_id = dict(self._by_id)

    def held(self):
        """The ids with at least one connection here (a live view, not a copy)."""
        return self._by_id.keys()

    @property
    def ids(self) -> int:
        """How many distinct ids have at least one connection."""
        return len(self._by_id)

    # -- delivery -----------------------------------------------------------

    def send(self, id: str, message: Any) -> Fanout:
        """Deliver to every connection logged in as ``id``."""
        conns = self.connections_of(id)
        offered = ({conns[0].transport: 1} if len(conns) == 1
                   else Counter(conn.transport for conn in conns))
        return deliver_all(conns, message, offered)

    def broadcast(self, message: Any) -> Fanout:
        """Deliver to every connection, as :meth:`send`."""
        return deliver_all(self.all_connections(), message, dict(self._by_transport))


def deliver_all(conns: Sequence[Connection], message: Any, offered: dict[str, int]) -> Fanout:
    """Offer ``message`` to each of ``conns`` (``offered``: how many of each transport);
    those still logged in that refused it are too slow.

    A connection that takes the message costs one call and one addition;
    only one that refuses it (too slow, or gone and logged out) is kept,
    to take it off its transport's count after the loop. Nothing here
    may yield: ``offered`` must stay the count of ``conns`` throughout.
    """
    delivered = 0
    failed: list[Connection] = []
    for conn in conns:
        if conn.deliver(message):
            delivered += 1
        else:
            failed.append(conn)
    if not failed:
        return Fanout(delivered, failed, offered)
    by_transport = dict(offered)
    for conn in failed:
        by_transport[conn.transport] -= 1
    return Fanout(delivered, [conn for conn in failed if conn.ids], by_transport)

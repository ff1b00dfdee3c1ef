"""The in-process broker: one process, its history in memory (the default).

:class:`MemoryBroker` assigns ids and keeps history with :class:`MemoryHistory`
and delivers each publish to this process at once, in the publisher's own
greenlet turn; so a login and its replay, which the hub also does in one turn,
see every message exactly once: in the replay or in the queue, never both.

Every id counts as subscribed here (there is no other process to send it to),
so :meth:`MemoryBroker.subscribe` keeps nothing: the hub's router finds
whether a connection holds the id, and an id with none costs nothing.

History (:class:`MemoryHistory`): every accepted message gets an id
``<epoch>-<seq>``: ``seq`` counts up across all messages of this history (so
it is ordered per user id, and a connection logged in as several ids can merge
them), and ``epoch`` is drawn when the history is created, as Centrifugo does:
after a restart the epoch differs, so an id from before is recognised as such
and never mistaken for a new one. Bounds: at most ``per_id`` messages per id,
none older than ``ttl`` seconds, and at most ``max_bytes`` of message data in
all. One global deque in seq order finds the oldest message at once for all
three. An id with no history and no connection costs nothing: its entry goes
with its last message.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence

from comet.broker import BrokerUnavailable, Deliver, Lost, Message, Replay, parse_position
from comet.broker.graph import MemoryGraph

#: the "user id" under which broadcasts are kept
BROADCAST = "*"


class MemoryBroker:
    """The in-process :class:`~comet.broker.Broker`: history in memory, delivery at once."""

    spans_processes = False
    vector = False
    up = True

    def __init__(self, history: MemoryHistory | None = None) -> None:
        self.history = history if history is not None else MemoryHistory()
        self._deliver: Deliver | None = None
        #: who follows whom (/subscribe, /notify), in this process
        self.graph = MemoryGraph()

    def start(self, deliver: Deliver, lost: Lost | None = None, held=None) -> None:
        self._deliver = deliver  # history is never lost behind a connection's back here

    def subscribe(self, ids: Sequence[str], new: Sequence[str]) -> None:
        """Nothing to do: in one process every id is delivered here."""

    def unsubscribe(self, ids: Sequence[str]) -> None:
        """Nothing to do, as for :meth:`subscribe`."""

    def publish(self, id: str, data: bytes) -> tuple[Message, int]:
        deliver = self._open()
        message = self.history.publish(id, data)
        return message, deliver(id, message)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, int]]:
        self._open()  # all or nothing: refused before the first is kept
        return [self.publish(id, data) for id, data in items]

    def broadcast(self, data: bytes) -> tuple[Message, int]:
        deliver = self._open()
        message = self.history.publish(BROADCAST, data)
        return message, deliver(None, message)

    def _open(self) -> Deliver:
        """Where messages go; closed (the server has drained), a message would go nowhere,
        and the history with it when the process exits: refused, never a 200."""
        if self._deliver is None:
            raise BrokerUnavailable("the server is shutting down")
        return self._deliver

    def replay(self, ids: Sequence[str], last: str | None) -> Replay:
        return self.history.since(ids, last)

    def published_at(self, message: Message) -> None:
        """Not told by the id here (a counter): the hub times the publish itself, as
        delivery happens within it."""
        return None

    def position(self) -> str:
        return self.history.position()

    def snapshot(self) -> dict:
        return {"kind": "memory", "up": True, "kept": len(self.history),
                "graph": self.graph.snapshot()}

    def close(self) -> None:
        self._deliver = None


class MemoryHistory:
    """The in-process history: per id deques of :class:`Message`, bounded three ways."""

    def __init__(self, per_id: int = 100, ttl: float = 300.0,
                 max_bytes: int = 64 * 1024 * 1024, clock=time.monotonic) -> None:
        self.epoch = os.urandom(4).hex()
        self.per_id = per_id
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._seq = 0
        self._by_id: dict[str, deque] = {}
        #: (seq, id, time) of every kept message, oldest first
        self._order: deque = deque()
        self._bytes = 0
        #: messages kept (entries of _order may also stand for ones evicted by count)
        self._count = 0
        #: highest seq evicted for each id that still has history (gap detection)
        self._evicted: dict[str, int] = {}
        #: highest seq evicted for an id whose history is now empty, across all ids
        self._evicted_floor = 0

    # -- writing --------------------------------------------------------------

    def publish(self, id: str, data: bytes) -> Message:
        """Give ``data`` the next id and keep it under ``id``."""
        self._seq += 1
        message = Message(self.epoch, self._seq, data)
        if self.per_id > 0:
            kept = self._by_id.setdefault(id, deque())
            kept.append(message)
            self._order.append((message.seq, id, self._clock()))
            self._bytes += len(data)
            self._count += 1
            if len(kept) > self.per_id:
                self._evict_front(id)
                self._compact()
        else:
            self._evicted_floor = message.seq  # kept nothing: every resume has missed it
        self.expire()
        return message

    def expire(self) -> None:
        """Drop messages past the ttl or the byte budget, oldest first."""
        now = self._clock()
        while self._order and (self._bytes > self.max_bytes
                               or now - self._order[0][2] > self.ttl):
            seq, id, _ = self._order.popleft()
            kept = self._by_id.get(id)
            if kept and kept[0].seq == seq:
                self._evict_front(id)

    def _evict_front(self, id: str) -> None:
        # An entry evicted by count stays in _order until it reaches the front,
        # where expire() finds it no longer kept and skips it.
        kept = self._by_id[id]
        gone = kept.popleft()
        self._bytes -= len(gone.data)
        self._count -= 1
        if kept:
            self._evicted[id] = gone.seq
        else:
            del self._by_id[id]
            self._evicted.pop(id, None)
            self._evicted_floor = max(self._evicted_floor, gone.seq)

    def _compact(self) -> None:
        """Forget _order entries of messages evicted by count, so _order stays bounded."""
        if len(self._order) > 2 * self._count + 1024:
            first = {id: kept[0].seq for id, kept in self._by_id.items()}
            self._order = deque(entry for entry in self._order
                                if entry[0] >= first.get(entry[1], entry[0] + 1))

    # -- reading --------------------------------------------------------------

    def position(self) -> str:
        """The id a client that has seen everything so far would hold."""
        return f"{self.epoch}-{self._seq}"

    def since(self, ids: Sequence[str], last: str | None) -> Replay:
        """Messages for ``ids`` (and broadcasts) after ``last``, oldest first.

        ``missed`` is true when ``last`` is of another epoch (the server
        restarted) or older than what is kept, so some messages are gone; after
        a restart, what the new epoch kept is replayed all the same. For
        an id that keeps nothing now, nothing per id is remembered (that is what
        makes it free), so any eviction after ``last`` counts: the answer may
        say "missed" when unsure, never stay silent about a loss.
        """
        after = parse_position(last, self.epoch)
        missed = after is None or after > self._seq
        if missed:
            after = 0  # what this epoch still keeps is known: replay it after the notice
        self.expire()
        found: list[Message] = []
        for id in (*ids, BROADCAST):
            kept = self._by_id.get(id)
            if kept is None:
                missed = missed or self._evicted_floor > after
                continue
            missed = missed or self._evicted.get(id, 0) > after
            found.extend(m for m in kept if m.seq > after)
        found.sort(key=lambda m: m.seq)
        return Replay(found, missed, f"{self.epoch}-{after}")

    def __len__(self) -> int:
        return self._count

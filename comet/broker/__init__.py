"""The broker: who is subscribed where, message ids, history, publishing.

The hub (:mod:`comet.hub`) talks to exactly one broker through
:class:`Broker` and never knows which: the in-process broker
(:class:`comet.broker.memory.MemoryBroker`, the default: one process, its
history in memory) or, later, one that spans processes and machines over a
real message broker. Every broker passes one conformance suite
(``tests/test_broker.py``).

What a broker owns, and what it does not:

* **Message ids.** Every accepted message gets an id ``<epoch>-<offset>``
  from the broker, the same on every process that delivers it. ``epoch``
  changes only when the history behind it was lost, so an id of another
  epoch is known to be from before the loss (a ``missed`` notice, never a
  silent gap).
* **History and replay.** :meth:`Broker.replay` gives the messages for some
  ids (and every broadcast) after a client's last id, oldest first.
* **Which process gets what.** The hub :meth:`~Broker.subscribe`\\ s an id
  when this process's first connection logs in as it, and
  :meth:`~Broker.unsubscribe`\\ s it when the last one leaves; the broker then
  calls the hub's ``deliver(id, message)`` for every message published to a
  subscribed id anywhere (``deliver(None, message)`` for a broadcast).
* Not the connections: which connections of this process hold an id is the
  hub's router. The broker knows no HTTP, no transport and no connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol


class Message:
    """One accepted message: its id (``<epoch>-<offset>``), its bytes, and ``seq`` to order it."""

    __slots__ = ("id", "data", "seq")

    def __init__(self, epoch: str, seq: int, data: bytes) -> None:
        self.id = f"{epoch}-{seq}"
        self.data = data
        self.seq = seq

    def __repr__(self) -> str:
        return f"Message({self.id!r}, {self.data[:40]!r})"


class Replay(NamedTuple):
    """What a reconnecting client gets: the messages after its id, and whether some are lost."""

    messages: list[Message]
    missed: bool
    #: the id the replay starts after: where a client that got none of it resumes
    start: str


def parse_position(text: str | None, epoch: str) -> int | None:
    """The offset of ``text`` if it is an id of this epoch; None for another epoch or garbage."""
    if not text:
        return None
    head, _, tail = text.strip().rpartition("-")
    if head != epoch or not tail.isdigit():
        return None
    return int(tail)


#: the hub's side: deliver a message to this process's connections of ``id``
#: (None: a broadcast, to all of them); returns how many took it
Deliver = Callable[[str | None, Message], int]


class Broker(Protocol):
    """What the hub needs of a broker; see the module docstring for the contract."""

    #: True when a publish may be delivered by other processes too: then ``publish``
    #: returns None for the count, as the local count would mislead
    spans_processes: bool

    def start(self, deliver: Deliver) -> None:
        """Begin delivering to ``deliver``; called once, before any other method."""

    def subscribe(self, ids: Sequence[str]) -> None:
        """This process now holds connections for ``ids``: deliver their messages here."""

    def unsubscribe(self, ids: Sequence[str]) -> None:
        """This process holds no connection for ``ids`` any more."""

    def publish(self, id: str, data: bytes) -> tuple[Message, int | None]:
        """Give ``data`` an id, keep it in ``id``'s history, deliver it wherever ``id`` is."""

    def broadcast(self, data: bytes) -> tuple[Message, int | None]:
        """The same for every connection everywhere; kept once, replayed to every id."""

    def replay(self, ids: Sequence[str], last: str | None) -> Replay:
        """Messages for ``ids`` and broadcasts after ``last``, oldest first."""

    def position(self) -> str:
        """The id a client that has seen everything so far would hold."""

    def close(self) -> None:
        """Stop delivering and let go of what the broker holds."""

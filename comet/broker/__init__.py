"""The broker: who is subscribed where, message ids, history, publishing.

The hub (:mod:`comet.hub`) talks to exactly one broker through
:class:`Broker` and never knows which: the in-process broker
(:class:`comet.broker.memory.MemoryBroker`, the default: one process, its
history in memory) or :class:`comet.broker.redis.RedisBroker`, which spans
processes and machines over Redis. Every broker passes one conformance suite
(``tests/test_broker.py``).

What a broker owns, and what it does not:

* **Message ids.** Every accepted message gets an id ``<epoch>-<offset>``
  from the broker, the same on every process that delivers it. ``epoch``
  changes only when the history behind it was lost, so an id of another
  epoch is known to be from before the loss (a ``missed`` notice, never a
  silent gap).
* **History and replay.** :meth:`Broker.replay` gives the messages for some
  ids (and every broadcast) after a client's last id, oldest first.
* **Which process gets what.** The hub :meth:`~Broker.subscribe`\\ s the ids
  of every login, saying which are new here (the broker returns once they are
  delivered here), and :meth:`~Broker.unsubscribe`\\ s an id when its last
  connection leaves; which ids this process holds is the hub's router's to say
  (``held``), never a second copy in the broker; the broker then
  calls the hub's ``deliver(id, message)`` for every message published to a
  subscribed id anywhere (``deliver(None, message)`` for a broadcast).
* **Failure.** A broker that cannot do its part raises
  :class:`BrokerUnavailable`; when it learns that history cannot cover what
  some ids' connections missed, it calls the hub's ``lost`` with them.
* **Subscriptions between users** (:attr:`Broker.graph`, :mod:`comet.broker.graph`):
  who follows whom, kept where the history is, so every process that can
  publish sees the same graph.
* Not the connections: which connections of this process hold an id is the
  hub's router. The broker knows no HTTP, no transport and no connection.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from comet.broker.cursor import offset_of

if TYPE_CHECKING:  # graph.py imports nothing of this module, but keep the seam one-way
    from comet.broker.graph import Graph


class Message:
    """One accepted message: its id (``<epoch>-<offset>``), its bytes, and ``seq`` to order it.

    ``stream`` (the id it was sent to, ``*`` for a broadcast) is set where
    positions are per stream (Redis Cluster, :mod:`comet.broker.cursor`).
    """

    __slots__ = ("id", "data", "seq", "epoch", "stream")

    def __init__(self, epoch: str, seq: int, data: bytes, stream: str | None = None) -> None:
        self.id = f"{epoch}-{seq}"
        self.data = data
        self.seq = seq
        self.epoch = epoch
        self.stream = stream

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
    return offset_of(tail) if head == epoch else None


#: the hub's side: deliver a message to this process's connections of ``id``
#: (None: a broadcast, to all of them); returns how many took it
Deliver = Callable[[str | None, Message], int]

#: the hub's side: history cannot cover what these ids' connections here missed
#: (None: any id's), so they must end and resume, and learn it from a ``missed`` notice
Lost = Callable[[Sequence[str] | None], None]


#: the hub's side: the ids this process has connections for now (its router's); a
#: broker that must subscribe everything again (after losing Redis) asks it
Held = Callable[[], Collection[str]]


class BrokerUnavailable(Exception):
    """The broker cannot take a publish, a subscription or a replay now (a 503, never a 200)."""


class Broker(Protocol):
    """What the hub needs of a broker; see the module docstring for the contract."""

    #: True when a publish may be delivered by other processes too: then ``publish``
    #: returns None for the count, as the local count would mislead
    spans_processes: bool

    #: True when a client's position is one element per stream (a
    #: :class:`~comet.broker.cursor.Cursor`): ``replay``'s ``start`` is then that
    #: vector's text, ``replay(ids, None)`` gives where a new login begins, and
    #: ``position()`` is not used
    vector: bool

    #: False while the broker cannot publish or subscribe (``/health`` answers 503)
    up: bool

    #: who follows whom (``/subscribe``, ``/notify``): in this process, or in Redis
    #: where the broker spans processes (:mod:`comet.broker.graph`)
    graph: Graph

    def start(self, deliver: Deliver, lost: Lost | None = None,
              held: Held | None = None) -> None:
        """Begin delivering to ``deliver``; called once, before any other method."""

    def subscribe(self, ids: Sequence[str], new: Sequence[str]) -> None:
        """A connection here logged in as ``ids``; ``new`` are those this process had no
        connection for until now. Deliver their messages here; returns once all of
        ``ids`` are (another login's may still be on its way), or raises
        BrokerUnavailable."""

    def unsubscribe(self, ids: Sequence[str]) -> None:
        """This process holds no connection for ``ids`` any more."""

    def publish(self, id: str, data: bytes) -> tuple[Message, int | None]:
        """Give ``data`` an id, keep it in ``id``'s history, deliver it wherever ``id`` is."""

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, int | None]]:
        """:meth:`publish` for each ``(id, data)``, in order, at the cost of one where it can."""

    def broadcast(self, data: bytes) -> tuple[Message, int | None]:
        """The same for every connection everywhere; kept once, replayed to every id."""

    def replay(self, ids: Sequence[str], last: str | None) -> Replay:
        """Messages for ``ids`` and broadcasts after ``last``, oldest first."""

    def position(self) -> str:
        """The id a client that has seen everything so far would hold."""

    def published_at(self, message: Message) -> float | None:
        """When ``message`` was published (epoch seconds), where its id says (Redis:
        offsets are its clock); None where it does not."""

    def snapshot(self) -> dict:
        """What ``/stats`` shows of the broker."""

    def close(self) -> None:
        """Stop delivering and let go of what the broker holds."""


def redacted(url: str) -> str:
    """``url`` fit for a log line: any password replaced by ``***``."""
    parts = urlsplit(url)
    query = "&".join("password=***" if pair.lower().startswith("password=") else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, colon, _ = user.partition(":")
        netloc = f"{name}{':***' if colon else ''}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

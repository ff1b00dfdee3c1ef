"""Where one connection is in each stream it reads: positions as vectors (Redis Cluster).

With one Redis, one counter orders every message (:mod:`comet.broker.redisscripts`),
so a client's position is one id, ``<epoch>-<offset>``. In a cluster each id's
stream lives on its own node with its own epoch and offsets, and messages from
two nodes reach a connection in no fixed order: one number cannot say what a
client has seen (a message of node B with a smaller offset may arrive after one
of node A). So there a position is a vector, one element per stream the
connection reads (its ids and ``*``, the broadcasts)::

    alice@3f9a21-1826000123456~*@77b0c4-1826000120000

and every SSE event id and long-poll ``last`` is the connection's whole vector
after that message, so ``Last-Event-ID`` / ``since`` resume each stream exactly
where it was. An element with an empty epoch (``bob@-1826000100000``) is "as
of a time": the stream did not exist then, and whatever it has came later.

A :class:`Cursor` is the connection's vector (its ``seen`` in
:class:`comet.life.Life`): it drops a message it has already seen (a replay and
a live delivery may bring the same one) and gives every other one a per
connection id (:class:`Positioned`). Ids never contain ``@`` or ``~``
(:data:`comet.inputs.ID_PATTERN`), so the text is unambiguous.
"""

from __future__ import annotations

#: what separates the elements, and an element's stream from its position
ELEMENTS, AT = "~", "@"
#: elements a position may have (ids per connection are bounded well below this)
MAX_ELEMENTS = 1024
#: digits an offset may have: a 64-bit counter's, as Redis Stream ids take
MAX_OFFSET_DIGITS = 18


def offset_of(text: str) -> int | None:
    """The offset a client wrote, or None: ASCII digits only, and few of them.

    Not ``str.isdigit``: it takes "²" (byte 0xB2 of a latin-1 header), which
    ``int`` refuses, as it refuses more than 4,300 digits; either would be a 500.
    """
    if not (0 < len(text) <= MAX_OFFSET_DIGITS and text.isascii() and text.isdecimal()):
        return None
    return int(text)


class Positioned:
    """A message as one connection sends it: its data, and that connection's vector as id."""

    __slots__ = ("id", "data", "seq", "message")

    def __init__(self, id: str, message) -> None:
        self.id = id
        self.data = message.data
        self.seq = message.seq
        #: the shared message (an :class:`~comet.hub.Outgoing`), for transports with no ids
        self.message = message

    def framed(self, framing) -> bytes:
        """The socket bytes: made for this connection where the transport shows the id."""
        if framing.shows_id:
            return framing.wire(framing.message(self))
        return self.message.framed(framing)


class Cursor:
    """One connection's position in each of its streams: ``{stream: (epoch, offset)}``."""

    __slots__ = ("at",)

    def __init__(self, at: dict[str, tuple[str, int]]) -> None:
        self.at = at

    def advance(self, message) -> bool:
        """True, and the position moves on, for a message this connection has not seen.

        A message of another epoch than the element's is new: its stream was
        made anew (it expired, idle, while this connection held it), so every
        message of the old one reached this connection already.
        """
        here = self.at.get(message.stream)
        if here is not None and here[0] == message.epoch and message.seq <= here[1]:
            return False
        self.at[message.stream] = (message.epoch, message.seq)
        return True

    def positioned(self, message) -> Positioned:
        """``message`` as this connection sends it: with its position as the id."""
        return Positioned(self.text(), message)

    def before(self, stream: str, epoch: str, seq: int) -> None:
        """Move the element back to just before ``seq``: that message and the ones after
        it are still to come (a login's held messages published while it began)."""
        here = self.at.get(stream)
        if here is None or here[0] != epoch or here[1] >= seq:
            self.at[stream] = (epoch, seq - 1)

    def text(self) -> str:
        return ELEMENTS.join(f"{stream}{AT}{epoch}-{seq}"
                             for stream, (epoch, seq) in self.at.items())


def parse(text: str | None) -> dict[str, tuple[str, int]] | None:
    """The elements of a position's text; None when it is not a vector (garbage, or
    an id from a single Redis or the in-process broker)."""
    if not text or AT not in text:
        return None
    at: dict[str, tuple[str, int]] = {}
    for element in text.strip().split(ELEMENTS, MAX_ELEMENTS):
        stream, sign, position = element.rpartition(AT)
        epoch, dash, offset = position.rpartition("-")
        seq = offset_of(offset)
        if not (stream and sign and dash) or seq is None:
            return None
        at[stream] = (epoch, seq)
    return at

"""A strict, incremental decoder for Server-Sent Events carried in a chunked body.

Theory of operation: the comet server sends ``text/event-stream`` (WHATWG HTML,
"Server-sent events") as the chunked body of ``GET /events/<id>``. The chunked layer
is :class:`flood.chunked.ChunkedDecoder`, strict as ever; :class:`SseDecoder` extends
it (same object, three more slots, no second record per connection) and parses the
event stream out of the chunk data, which may split a line or an event anywhere.

What counts as a message: an event whose data buffer is not empty when a blank line
dispatches it, exactly when an EventSource would fire ``message``. Comment lines
(``: heartbeat``) and ``retry:``/``id:``/``event:`` lines alone are not messages.
Lines end with CRLF, LF or CR (a CRLF split over two chunks is one line end). Unknown
field names are ignored as the spec says; what is refused, with a reason: a line that
is not UTF-8, a line over :data:`MAX_LINE`, an event over :data:`MAX_EVENT`.
"""

from __future__ import annotations

import re

from flood.chunked import ChunkedDecoder, DecodeError

#: Longest line kept while waiting for its end.
MAX_LINE = 256 * 1024
#: Largest event data; the server's --max-message default is 64 KiB.
MAX_EVENT = 1024 * 1024

_BREAK = re.compile(rb"\r\n|\r|\n")
#: a ``data`` field's line in a block of LF-separated lines: its value (one space
#: after the colon dropped, as the spec says; ``data`` alone is an empty value)
_DATA_LINE = re.compile(rb"^data(?::(?: ?)([^\n]*))?$", re.M)


class SseError(DecodeError):
    """The event stream breaks the spec (or the limits above); the message is the reason."""


class SseDecoder(ChunkedDecoder):
    """One ``/events/`` body: chunked decoding, then the event stream."""

    __slots__ = (
        "_partial",  # the partial line after the last line end
        "_data",     # the event's data buffer so far, each data line + LF
        "_skip_lf",  # the last piece ended in CR: a LF opening the next one ends no line
    )

    def __init__(self) -> None:
        super().__init__()
        self._partial = b""
        self._data = b""
        self._skip_lf = False

    @property
    def mid_chunk(self) -> bool:
        return super().mid_chunk or bool(self._partial) or bool(self._data)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume body bytes; return the data of each event they complete."""
        events: list[bytes] = []
        for piece in super().feed(data):
            self._lines(piece, events)
        return events

    def _lines(self, piece: bytes, events: list[bytes]) -> None:
        if (not self._partial and not self._data and not self._skip_lf
                and piece[-2:] == b"\n\n" and b"\r" not in piece and b"\n\n\n" not in piece
                and _utf8(piece)):
            _whole_events(piece, events)  # what the server sends: whole events, LF only
            return
        if self._skip_lf and piece[:1] == b"\n":
            piece = piece[1:]
        self._skip_lf = piece[-1:] == b"\r"
        text = self._partial + piece if self._partial else piece
        if b"\r" in text:
            lines = _BREAK.split(text)
        else:  # the usual case, LF only: a plain split, and one UTF-8 check for all
            lines = text.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            raise SseError("event-stream line too long")
        try:
            text[:len(text) - len(self._partial)].decode("utf-8")
        except UnicodeDecodeError:
            bad = next(line for line in lines if not _utf8(line))
            raise SseError(f"event-stream line is not UTF-8 {bad[:40]!r}") from None
        for line in lines:
            self._field(line, events)

    def _field(self, line: bytes, events: list[bytes]) -> None:
        if not line:  # dispatch
            if self._data:
                events.append(self._data[:-1])
                self._data = b""
            return
        if line[0] == 58:  # b":" a comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if len(self._data) + len(value) > MAX_EVENT:
                raise SseError("event data too large")
            self._data += value + b"\n"
        # id, event, retry and unknown fields carry no message for the flood


def _whole_events(piece: bytes, events: list[bytes]) -> None:
    """Whole events, as :meth:`SseDecoder._lines` would read them, without its per-line
    steps: ``piece`` ends an event, has no CR and no empty event in it, and is UTF-8."""
    for block in piece[:-2].split(b"\n\n"):
        values = _DATA_LINE.findall(block)
        if values:
            data = values[0] if len(values) == 1 else b"\n".join(values)
            if len(data) > MAX_EVENT:
                raise SseError("event data too large")
            events.append(data)


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

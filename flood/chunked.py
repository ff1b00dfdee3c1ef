"""A strict, incremental decoder for HTTP/1.1 chunked bodies (RFC 9112 section 7.1).

Theory of operation: bytes go in with :meth:`ChunkedDecoder.feed` in whatever pieces
the network delivers; complete data chunks come out. The decoder touches no socket
and keeps only what a half-received chunk needs, because the flood holds one per
connection and a held connection must stay small (``__slots__``, a few ints, and a
partial line or partial chunk while one is in flight).

Grammar accepted::

    chunked-body = *chunk last-chunk trailer-section CRLF
    chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    chunk-size   = 1*HEXDIG
    last-chunk   = 1*("0") [ chunk-ext ] CRLF
    chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )

Extensions are parsed, checked and ignored (a recipient must ignore unknown ones).
Everything else is an error with a reason: a size that is not hex, a bare LF, data
not followed by CRLF, an over-long line, a malformed trailer field. The zero-length
last chunk ends the body and is not counted as a data chunk.
"""

from __future__ import annotations

import re

#: Longest chunk-size line (size + extensions) we accept; mochiweb and h11 use similar caps.
MAX_LINE = 4096
#: Largest chunk size; 16 hex digits covers anything a comet server would send.
MAX_SIZE_DIGITS = 16
#: Most bytes of one chunk kept for the caller (for the latency token); the rest is counted only.
MAX_PAYLOAD = 64 * 1024

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXT = re.compile(rb"[ \t]*;[ \t]*" + _TOKEN
                  + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_FIELD = re.compile(_TOKEN + rb":[ \t]*[^\r\n]*")
#: a data chunk's size line with no extension: what the fast path of :meth:`feed` takes
_PLAIN_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")


class DecodeError(ValueError):
    """What a transport's decoder raises on bytes that break its protocol; the message is the
    close reason shown to the user. Every decoder's error derives from it."""


class ChunkError(DecodeError):
    """The body is not valid chunked encoding; the message is the reason shown to the user."""


def _parse_size_line(line: bytes) -> int:
    """Chunk size from ``size [; ext...]``; extensions are validated and dropped."""
    m = _HEX.match(line)
    if not m:
        raise ChunkError(f"malformed chunk size {line[:40]!r}")
    digits = m.group()
    if len(digits) > MAX_SIZE_DIGITS:
        raise ChunkError(f"chunk size too large {digits[:40]!r}")
    pos = m.end()
    while pos < len(line):
        ext = _EXT.match(line, pos)
        if not ext or ext.end() == pos:
            raise ChunkError(f"malformed chunk size or extension {line[:40]!r}")
        pos = ext.end()
    return int(digits, 16)


class ChunkedDecoder:
    """One body's decoding state; see the module docstring for the grammar."""

    __slots__ = (
        "_state",    # one of _SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE
        "_left",     # bytes of chunk data still to come (in _DATA), CRLF bytes seen (in _DATA_CRLF)
        "_buf",      # partial size/trailer line, or the data of the chunk in flight
    )

    #: the decoder never has bytes to send back (WebSocket pongs and long-poll requests do)
    answers = False
    #: the close reason once :attr:`done`
    end_reason = "stream ended"

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._buf = b""

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section have arrived."""
        return self._state == _DONE

    @property
    def mid_chunk(self) -> bool:
        """True when the body stopped inside a chunk (for the close reason)."""
        return self._state in (_DATA, _DATA_CRLF) or (self._state == _SIZE and bool(self._buf))

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return the data chunks completed by them (possibly none).

        Raises :class:`ChunkError` on the first violation; the decoder is then unusable.
        Bytes after the end of the body are ignored: the flood closes such a stream.
        """
        chunks: list[bytes] = []
        pos, end = 0, len(data)
        if self._state == _SIZE and not self._buf:
            pos = _whole_chunks(data, chunks)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                if len(self._buf) < MAX_PAYLOAD:
                    self._buf += data[pos:pos + min(take, MAX_PAYLOAD - len(self._buf))]
                self._left -= take
                pos += take
                if self._left == 0:
                    chunks.append(self._buf)
                    self._buf = b""
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                want = b"\r\n"[self._left]
                if data[pos] != want:
                    raise ChunkError("chunk data not followed by CRLF")
                pos += 1
                self._left += 1
                if self._left == 2:
                    self._left = 0
                    self._state = _SIZE
            elif state == _DONE:
                return chunks
            else:
                pos = self._line(data, pos, end)
        return chunks

    def _line(self, data: bytes, pos: int, end: int) -> int:
        """Gather a CRLF-terminated line (size line or trailer line) and act on it."""
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            self._buf += data[pos:end]
            if len(self._buf) > MAX_LINE:
                raise ChunkError("chunk size line too long")
            return end
        line = self._buf + data[pos:nl + 1]
        self._buf = b""
        if len(line) > MAX_LINE + 2:
            raise ChunkError("chunk size line too long")
        if len(line) < 2 or line[-2] != 13:  # b"\r"
            raise ChunkError("bare LF in chunk framing")
        line = line[:-2]
        if self._state == _SIZE:
            size = _parse_size_line(line)
            if size == 0:
                self._state = _TRAILER
            else:
                self._left = size
                self._state = _DATA
        elif line == b"":
            self._state = _DONE
        elif not _FIELD.fullmatch(line):
            raise ChunkError(f"malformed trailer field {line[:40]!r}")
        return nl + 1


def _whole_chunks(data: bytes, chunks: list[bytes]) -> int:
    """Take the whole data chunks that open ``data``; return where the rest begins.

    What a comet server sends: each write one or more whole chunks, no extension,
    well under :data:`MAX_PAYLOAD`. One regex match and a slice each, where the
    state machine of :meth:`ChunkedDecoder.feed` takes several steps a chunk; the
    first piece that is anything else (a split chunk, an extension, the last chunk,
    a framing error) stops here and goes through the state machine, which decides.
    """
    pos, end = 0, len(data)
    match = _PLAIN_SIZE.match
    while pos < end:
        m = match(data, pos)
        if m is None:
            break
        size = int(m.group(1), 16)
        start = m.end()
        stop = start + size
        if not 0 < size <= MAX_PAYLOAD or data[stop:stop + 2] != b"\r\n":
            break
        chunks.append(data[start:stop])
        pos = stop + 2
    return pos

"""The request the flood sends and the response head it accepts; bytes only, no sockets.

A held stream is useful to the flood only if it is ``HTTP/1.x 200`` with a chunked
body, so :func:`parse_head` checks exactly that and says why when it is not; the
reason becomes the ``Closed:`` line.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Longest response head we read before giving up (status line + headers).
MAX_HEAD = 64 * 1024

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*?)[ \t]*")


class HeadError(ValueError):
    """The response cannot start a held stream; the message is the close reason."""


class Head(NamedTuple):
    status: int
    headers: dict[bytes, bytes]  #: lower-cased names; repeated fields joined with ", "


def request(host: str, port: int, path: str, extra: bytes = b"") -> bytes:
    """The GET the seed's httpc sent: HTTP/1.1, keep-alive, nothing else needed."""
    hostport = host if port == 80 else f"{host}:{port}"
    if ":" in host:
        hostport = f"[{host}]" if port == 80 else f"[{host}]:{port}"
    return (f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: comet-flood\r\n"
            "Accept: */*\r\n").encode("latin-1") + extra + b"\r\n"


def split_head(buf: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line has arrived, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HeadError("response head too long")
        return None
    return buf[:end], buf[end + 4:]


def read_head(recv) -> tuple[Head, bytes] | None:
    """Receive (``recv(n)``: a socket's) until a response head is whole: the parsed head
    and the bytes after it, or None when the peer closed first. Raises
    :class:`HeadError` on a malformed or endless head."""
    buf = b""
    while (parts := split_head(buf)) is None:
        data = recv(65536)
        if not data:
            return None
        buf += data
    return parse_head(parts[0]), parts[1]


def parse_head(head: bytes) -> Head:
    """Status and headers; raises :class:`HeadError` with a reason on malformed input."""
    lines = head.split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if not m:
        raise HeadError(f"bad status line {lines[0][:60]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if not f:
            raise HeadError(f"bad header line {line[:60]!r}")
        name, value = f.group(1).lower(), f.group(2)
        headers[name] = headers[name] + b", " + value if name in headers else value
    return Head(int(m.group(1)), headers)


def check_stream(head: Head) -> None:
    """A stream must be 200 and chunked (the last transfer coding), as the seed's server sends."""
    if head.status != 200:
        raise HeadError(f"status {head.status}")
    codings = [c.strip().lower() for c in head.headers.get(b"transfer-encoding", b"").split(b",")]
    if codings[-1] != b"chunked":
        raise HeadError("response is not chunked")

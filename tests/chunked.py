"""A strict HTTP/1.1 response reader for tests: status, headers, then chunk by chunk.

Every chunk-size line must be bare hex and CRLF, every chunk must end in CRLF:
anything else fails the test that reads it.
"""

from __future__ import annotations

import re
import socket

SIZE_LINE = re.compile(rb"[0-9A-Fa-f]+\r\n")


class StrictResponse:
    """Reads one response from a socket; ``next_chunk()`` returns b'' at the last chunk."""

    def __init__(self, sock: socket.socket, file=None) -> None:
        """``file``: the reader of an earlier response on this connection (it may
        have buffered the start of this one)."""
        self.sock = sock
        self.file = file if file is not None else sock.makefile("rb")
        self.status_line = self.file.readline().decode("latin-1").rstrip("\r\n")
        self.headers: dict[str, str] = {}
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), f"header line not ended by CRLF: {line!r}"
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def next_chunk(self) -> bytes:
        size_line = self.file.readline()
        assert SIZE_LINE.fullmatch(size_line), f"bad chunk-size line {size_line!r}"
        size = int(size_line[:-2], 16)
        data = self.file.read(size)
        assert len(data) == size, f"chunk cut short: {len(data)} of {size} bytes"
        assert self.file.read(2) == b"\r\n", "chunk data not followed by CRLF"
        if size == 0:
            return b""
        return data

    def close(self) -> None:
        """Close the socket for real (the makefile holds a reference too)."""
        self.file.close()
        self.sock.close()

    def chunks_until(self, predicate, limit: int = 100) -> list[bytes]:
        """Read chunks until one satisfies ``predicate``; returns all read."""
        seen = []
        for _ in range(limit):
            chunk = self.next_chunk()
            seen.append(chunk)
            if predicate(chunk) or chunk == b"":
                return seen
        raise AssertionError(f"no matching chunk in {limit}: {seen}")


def open_stream(port: int, path: str, timeout: float = 10.0) -> StrictResponse:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return StrictResponse(sock)

"""A strict reader of a text/event-stream body, over the strict chunked reader.

Events are parsed as the WHATWG spec says (field lines, blank line ends an
event, ``data`` lines joined with LF); anything a compliant parser would
ignore or misread fails the test instead.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from tests.chunked import StrictResponse


@dataclass
class Event:
    data: str | None = None
    id: str | None = None
    event: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


class EventStream:
    def __init__(self, response: StrictResponse) -> None:
        self.response = response
        self._buffer = b""

    def next_event(self) -> Event:
        while b"\n\n" not in self._buffer:
            chunk = self.response.next_chunk()
            assert chunk, "stream ended"
            self._buffer += chunk
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        assert b"\r" not in block, f"CR in an event: {block!r}"
        event, data = Event(), []
        for line in block.decode("utf-8").split("\n"):
            name, colon, value = line.partition(":")
            assert colon, f"line without a colon: {line!r}"
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                event.comments.append(value)
            elif name == "data":
                data.append(value)
            elif name in ("id", "event"):
                setattr(event, name, value)
            elif name == "retry":
                event.retry = int(value)
            else:
                raise AssertionError(f"unknown field {name!r}")
        event.data = "\n".join(data) if data else None
        return event

    def next_message(self) -> Event:
        """The next event that carries data (skips retry hints and heartbeats)."""
        while True:
            event = self.next_event()
            if event.data is not None:
                return event

    def close(self) -> None:
        self.response.close()


def open_events(port: int, path: str, headers: dict | None = None) -> EventStream:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    response = StrictResponse(sock)
    assert response.status == 200, response.status_line
    return EventStream(response)

"""Long-poll for the flood: answers parsed in the epoll reader, the next request sent from it.

Theory of operation: ``GET /poll/<id>?since=<last>`` is answered once (JSON
``{"messages": [{"id", "data"}], "last": ...}``), then the client asks again with
``since=<last>`` on the same keep-alive connection. The connector (:mod:`flood.connect`) only
connects and sends the first request; :class:`PollDecoder` then lives in the epoll
reader like any held stream: it parses each answer's head and body (chunked, through
:class:`~flood.chunked.ChunkedDecoder`, or ``Content-Length``), returns its messages,
and owes the server the next request (:meth:`PollDecoder.take_replies`), which the
reader writes. So a waiting poll costs this record, not a greenlet.

Active, for poll, means a connection with a poll outstanding (counted when the first
request is sent, since the head only comes with the answer).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, quote, urlencode

from flood import head
from flood.chunked import ChunkedDecoder, DecodeError

#: Largest answer body accepted (the server's history is bounded; this is a safety cap).
MAX_ANSWER = 16 * 1024 * 1024


class PollError(DecodeError):
    """An answer the flood cannot use; the message is the close reason."""


def split_request(request: bytes) -> tuple[bytes, bytes]:
    """The first request cut where ``since=<last>`` goes: (up to the query, the rest).

    A ``since`` already in the URL is used for the first request only.
    """
    line_end = request.index(b"\r\n")
    method, target, version = request[:line_end].split(b" ")
    path, _, query = target.partition(b"?")
    kept = [(k, v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if k != "since"]
    pre = path + b"?" + (urlencode(kept).encode("latin-1") + b"&" if kept else b"") + b"since="
    return method + b" " + pre, b" " + version + request[line_end:]


class PollDecoder:
    """One long-poll connection's answers, one after another on the same socket."""

    __slots__ = (
        "_head",     # bytes of the answer head so far; None while reading its body
        "_body",     # ChunkedDecoder, or the Content-Length bytes still to come
        "_json",     # the answer body so far
        "_pre",      # the request up to "since=" (per connection: it names the id)
        "_post",     # the request after the since value
        "_out",      # the next request, once an answer is complete
    )

    answers = True
    done = False          #: a poll connection never ends on its own
    end_reason = "poll ended"

    def __init__(self, request: bytes) -> None:
        self._head: bytes | None = b""
        self._body: ChunkedDecoder | int = 0
        self._json = b""
        self._pre, self._post = split_request(request)
        self._out = b""

    @property
    def mid_chunk(self) -> bool:
        """An answer was arriving when the connection closed."""
        return self._head is None or bool(self._head)

    def take_replies(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return the message data of each answer they complete."""
        messages: list[bytes] = []
        while data:
            if self._head is not None:
                data = self._read_head(data)
                continue
            if isinstance(self._body, int):
                take = data[:self._body]
                self._json += take
                self._body -= len(take)
                data = data[len(take):]
                complete = self._body == 0
            else:
                self._json += b"".join(self._body.feed(data))
                data = b""
                complete = self._body.done
            if len(self._json) > MAX_ANSWER:
                raise PollError("poll answer too large")
            if complete:
                self._answer(messages)
        return messages

    def _read_head(self, data: bytes) -> bytes:
        buf = self._head + data
        try:
            split = head.split_head(buf)
            if split is None:
                self._head = buf
                return b""
            raw, rest = split
            answer = head.parse_head(raw)
        except head.HeadError as exc:
            raise PollError(str(exc)) from None
        if answer.status != 200:
            raise PollError(f"status {answer.status}")
        codings = answer.headers.get(b"transfer-encoding", b"").split(b",")
        if codings[-1].strip().lower() == b"chunked":
            self._body = ChunkedDecoder()
        elif answer.headers.get(b"content-length", b"").isdigit():
            self._body = int(answer.headers[b"content-length"])
        else:
            raise PollError("poll answer neither chunked nor with Content-Length")
        self._head, self._json = None, b""
        return rest

    def _answer(self, messages: list[bytes]) -> None:
        try:
            doc = json.loads(self._json)
            found = [m["data"].encode() for m in doc["messages"]]
            last = doc["last"]
            if not isinstance(last, str):
                raise TypeError("last")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PollError(f"poll answer is not the expected JSON ({exc})") from None
        messages.extend(found)
        self._out = self._pre + quote(last, safe="").encode() + self._post
        self._head, self._body, self._json = b"", 0, b""

"""What a request may carry, validated: ids, positions, a bounded body, a batch.

Each check raises :class:`BadRequest` with the status and a one-line reason,
which the app turns into a short plain-text answer and a log line. Nothing here
writes a response.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import re
from urllib.parse import parse_qs

import gevent

from comet.limits import FOLLOW_IDS, TOO_MANY_IDS

ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")

#: ids one connection may log in as (the path id plus ?id= values) unless --max-ids says
MAX_IDS_PER_CONNECTION = 64


#: characters of a client's position (``Last-Event-ID``, ``since``): one id, or in a
#: Redis Cluster one element per stream read (comet.broker.cursor)
MAX_POSITION = 8192


class BadRequest(Exception):
    """A client error: ``status`` is the HTTP status line, ``reason`` says why."""

    def __init__(self, status: str, reason: str, headers: tuple = (),
                 logged: bool = False, limit: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        #: already logged where it was raised (once per burst): the app writes no line
        self.logged = logged
        #: the limit this request is over (comet.limits' kinds), counted in /stats and
        #: logged once per burst; None: an ordinary client error, logged each time
        self.limit = limit


def check_id(id: str) -> str:
    if not ID_PATTERN.fullmatch(id):
        shown = id if len(id) <= 40 else id[:40] + "..."
        raise BadRequest("400 Bad Request",
                         f"bad id {shown!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")
    return id


def ids_of(path_id: str, query_string: str,
           max_ids: int = MAX_IDS_PER_CONNECTION) -> list[str]:
    """The path id, then each distinct ``?id=`` value, all validated."""
    ids = [check_id(path_id)]
    for extra in parse_qs(query_string, keep_blank_values=True).get("id", ()):
        if check_id(extra) not in ids:
            ids.append(extra)
    if len(ids) > max_ids:
        raise BadRequest("400 Bad Request",
                         f"too many ids: at most {max_ids} per connection (--max-ids)",
                         limit=TOO_MANY_IDS)
    return ids


def followed_ids(subscriber: str, query_string: str, max_ids: int) -> list[str]:
    """The distinct ``?to=`` ids of a ``/subscribe`` request, all validated: at least
    one, at most ``max_ids``, none the subscriber itself."""
    found = list(dict.fromkeys(map(check_id, parse_qs(query_string, keep_blank_values=True)
                                   .get("to", ()))))
    if not found:
        raise BadRequest("400 Bad Request", "name the ids to follow: ?to=<id>&to=<id>")
    if len(found) > max_ids:
        raise BadRequest("400 Bad Request",
                         f"too many ?to= ids: at most {max_ids} per request (--max-follow-ids)",
                         limit=FOLLOW_IDS)
    if subscriber in found:
        raise BadRequest("400 Bad Request", f"{subscriber!r} cannot follow itself")
    return found


def page_cursor(query_string: str) -> str | None:
    """``?after=``: the last id of the page before (a ``next`` from a listing), or None."""
    values = parse_qs(query_string, keep_blank_values=True).get("after", ())
    if len(values) > 1:
        raise BadRequest("400 Bad Request", "one ?after= cursor at most")
    if not values:
        return None
    if not ID_PATTERN.fullmatch(values[0]):
        raise BadRequest("400 Bad Request",
                         "bad ?after= cursor: the \"next\" of the page before (an id)")
    return values[0]


@functools.lru_cache(maxsize=4096)
def is_loopback(address: str) -> bool:
    """Is ``address`` (a REMOTE_ADDR) on this host? Asked on every publish; a
    publisher comes from a few addresses, so the answer is kept (bounded)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def read_body(environ: dict, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes, read within ``timeout`` seconds."""
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest("400 Bad Request", f"bad Content-Length {declared!r}") from None
        if length > limit:
            raise BadRequest("413 Content Too Large",
                             f"message of {length} bytes is over the {limit} byte limit",
                             (("Connection", "close"),))
    stream = environ["wsgi.input"]
    try:
        if isinstance(stream, io.BytesIO):  # read whole already (comet.fastpath)
            body = stream.read(limit + 1)
        else:
            with gevent.Timeout(timeout):
                body = stream.read(limit + 1)
    except gevent.Timeout:
        raise BadRequest("408 Request Timeout",
                         f"body not received within {timeout:g} s",
                         (("Connection", "close"),)) from None
    except (OSError, ValueError) as exc:
        raise BadRequest("400 Bad Request", f"unreadable body: {exc}",
                         (("Connection", "close"),)) from None
    if len(body) > limit:
        raise BadRequest("413 Content Too Large",
                         f"message is over the {limit} byte limit", (("Connection", "close"),))
    if not body:
        raise BadRequest("400 Bad Request", "empty message")
    return body


def last_event_id(environ: dict, header: str | None = "HTTP_LAST_EVENT_ID",
                  param: str = "last_event_id") -> str | None:
    """Where a client says what it saw last: a header, or a query parameter for polyfills."""
    value = environ.get(header) if header else None
    if value is None:
        values = parse_qs(environ.get("QUERY_STRING", "")).get(param)
        value = values[0] if values else None
    if value is not None and (len(value) > MAX_POSITION or not value.isprintable()):
        raise BadRequest("400 Bad Request",
                         f"bad {param}: at most {MAX_POSITION} printable characters")
    return value or None


#: media types a batch (``POST /send``, ``POST /notify``) may declare: newline-delimited JSON
BATCH_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")


def check_batch_type(environ: dict, route: str = "/send") -> None:
    """A batch (``POST /send``, ``POST /notify``) is newline-delimited JSON, said so;
    anything else is a 415."""
    declared = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if declared not in BATCH_TYPES:
        raise BadRequest("415 Unsupported Media Type",
                         f"POST {route} takes Content-Type: application/x-ndjson, "
                         f"not {declared[:40]!r}: one {{\"id\", \"message\"}} a line "
                         f"(or POST {route}/<id> with the message as the body)")


def parse_batch(body: bytes, max_message: int) -> list[tuple[str, bytes]]:
    """``(id, message)`` of every line of a batch, all checked before any is published.

    Each non-blank line is a JSON object ``{"id": "...", "message": "..."}``; the
    message is text (sent as UTF-8), 1 to ``max_message`` bytes. The first bad
    line refuses the whole batch with a 400 that names it (all or nothing).
    """
    found = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:  # bad JSON or bytes; nesting too deep
            raise _bad_line(number, f"not JSON ({exc.__class__.__name__})") from None
        if not isinstance(item, dict) or set(item) != {"id", "message"}:
            raise _bad_line(number, 'not an object of exactly "id" and "message"')
        id, message = item["id"], item["message"]
        if not isinstance(id, str) or not ID_PATTERN.fullmatch(id):
            raise _bad_line(number, "bad id: 1 to 128 of A-Z a-z 0-9 _ . : -")
        if not isinstance(message, str) or not message:
            raise _bad_line(number, "message must be a non-empty string")
        try:
            data = message.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\\ud800")
            raise _bad_line(number, "message is not Unicode text") from None
        if len(data) > max_message:
            raise _bad_line(number, f"message of {len(data)} bytes is over the "
                                    f"{max_message} byte limit")
        found.append((id, data))
    if not found:
        raise BadRequest("400 Bad Request", "empty batch: one {\"id\", \"message\"} a line")
    return found


def _bad_line(number: int, why: str) -> BadRequest:
    return BadRequest("400 Bad Request", f"line {number}: {why}; nothing was published")

"""The WSGI application: routes each request to a handler, wires router and transports.

Plain WSGI, no framework, so it runs under ``python -m comet.server`` and under
gunicorn alike. Routes (DESIGN.md, "The server's HTTP interface"):

====================  =========================================================
``GET /test/<id>``    the seed's chunked stream: welcome, ticks, routed messages
``POST /send/<id>``   deliver the body to every connection logged in as ``<id>``
``POST /broadcast``   deliver the body to every connection
``GET /stats``        counters and memory as JSON
``GET /health``       200 while serving
====================  =========================================================

A stream's life is a generator: the handler's greenlet sleeps in it between
chunks, as one Erlang process per connection sleeps in ``receive``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Callable

from comet import transports
from comet.config import Settings
from comet.connection import QueuedConnection
from comet.inputs import BadRequest, check_id, check_publisher, ids_of, read_body
from comet.router import Router
from comet.stats import Stats

log = logging.getLogger(__name__)

#: environ keys under which servers expose the client socket (ours, gunicorn's)
SOCKET_KEYS = ("comet.socket", "gunicorn.socket", "gunicorn.sock")

StartResponse = Callable[..., object]


class CometApp:
    """``application(environ, start_response)`` plus the router and counters it serves."""

    def __init__(self, settings: Settings, router: Router | None = None) -> None:
        self.settings = settings
        self.router = router if router is not None else Router()
        self.stats = Stats(self.router)
        self.accepting = True

    # -- WSGI entry ---------------------------------------------------------

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        try:
            handler, allowed, arg = self._route(path)
            if handler is None:
                raise BadRequest("404 Not Found", f"no such path {path[:80]!r}")
            if method not in allowed:
                raise BadRequest("405 Method Not Allowed", f"{method} is not allowed here",
                                 (("Allow", ", ".join(allowed)),))
            return handler(environ, start_response, arg)
        except BadRequest as error:
            log.info("%s %s %s: %s (client %s)", error.status[:3], method, path[:80],
                     error.reason, environ.get("REMOTE_ADDR"))
            return self._plain(start_response, error.status, error.reason + "\n",
                               error.headers)

    def _route(self, path: str) -> tuple:
        for prefix, handler, allowed in (
            ("/test/", self.test_stream, ("GET", "HEAD")),
            ("/send/", self.send, ("POST",)),
        ):
            if path.startswith(prefix):
                return handler, allowed, path[len(prefix):]
        exact = {
            "/broadcast": (self.broadcast, ("POST",)),
            "/stats": (self.stats_json, ("GET", "HEAD")),
            "/health": (self.health, ("GET", "HEAD")),
        }.get(path)
        if exact is None:
            return None, (), None
        return exact[0], exact[1], None

    # -- responses ----------------------------------------------------------

    @staticmethod
    def _plain(start_response: StartResponse, status: str, text: str,
               headers: Iterable = ()) -> list[bytes]:
        body = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body))), *headers])
        return [body]

    @staticmethod
    def _json(start_response: StartResponse, value: dict, status: str = "200 OK") -> list[bytes]:
        body = json.dumps(value).encode() + b"\n"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    # -- streams --------------------------------------------------------------

    def test_stream(self, environ: dict, start_response: StartResponse,
                    path_id: str) -> Iterable[bytes]:
        ids = ids_of(path_id, environ.get("QUERY_STRING", ""))
        headers = [("Content-Type", transports.TEST_CONTENT_TYPE),
                   ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        if environ["REQUEST_METHOD"] == "HEAD":
            start_response("200 OK", headers)
            return []
        self._check_capacity()
        sock = next((environ[k] for k in SOCKET_KEYS if k in environ), None)
        if sock is not None:
            sock.settimeout(self.settings.write_timeout)
        conn = QueuedConnection("test", self.settings.queue_limit, sock)
        start_response("200 OK", headers)
        return self._test_life(conn, ids)

    def _check_capacity(self) -> None:
        if not self.accepting:
            raise BadRequest("503 Service Unavailable", "server is shutting down",
                             (("Connection", "close"),))
        if self.router.connections >= self.settings.max_connections:
            self.stats.refused += 1
            raise BadRequest("503 Service Unavailable",
                             f"at capacity ({self.settings.max_connections} connections)",
                             (("Retry-After", "5"), ("Connection", "close")))

    def _test_life(self, conn: QueuedConnection, ids: list[str]) -> Iterator[bytes]:
        """One /test/ connection, from login to logout; sleeps between chunks."""
        id = ids[0]
        interval = self.settings.interval
        self._opened(conn, ids)
        try:
            yield transports.test_welcome(id)
            n = 1
            next_tick = time.monotonic() + interval
            while True:
                for message in conn.take():
                    yield transports.test_message(message)
                if conn.ended is not None:
                    break
                now = time.monotonic()
                if now >= next_tick:
                    yield transports.test_tick(n, id)
                    n += 1
                    next_tick = max(next_tick + interval, now)
                else:
                    conn.wait(next_tick - now)
            if not conn.abandoned:
                yield transports.test_farewell(conn.ended)
        finally:
            self._closed(conn)

    def _opened(self, conn: QueuedConnection, ids: list[str]) -> None:
        for id in ids:
            self.router.login(id, conn)
        self.stats.open[conn.transport] += 1
        self.stats.accepted += 1
        log.debug("login %s on %s", ",".join(ids), conn.transport)

    def _closed(self, conn: QueuedConnection) -> None:
        ids = ",".join(conn.ids)
        self.router.logout(conn)
        self.stats.open[conn.transport] -= 1
        log.debug("logout %s (%s)", ids, conn.ended or "client gone")

    def shutdown(self, reason: str = "server shutting down") -> int:
        """Refuse new streams and end every open one cleanly; returns how many."""
        self.accepting = False
        conns = list(self.router.all_connections())
        for conn in conns:
            self.router.logout(conn)
            conn.end(reason)
        return len(conns)

    # -- publishing -----------------------------------------------------------

    def _message(self, environ: dict) -> bytes:
        check_publisher(environ, self.settings.publish_key)
        return read_body(environ, self.settings.max_message, self.settings.read_timeout)

    def send(self, environ: dict, start_response: StartResponse, path_id: str) -> list[bytes]:
        id = check_id(path_id)
        message = self._message(environ)
        return self._json(start_response, {"id": id, "delivered": self.router.send(id, message)})

    def broadcast(self, environ: dict, start_response: StartResponse, _: None) -> list[bytes]:
        message = self._message(environ)
        return self._json(start_response, {"delivered": self.router.broadcast(message)})

    # -- introspection ----------------------------------------------------------

    def stats_json(self, environ: dict, start_response: StartResponse, _: None) -> list[bytes]:
        return self._json(start_response, self.stats.snapshot())

    def health(self, environ: dict, start_response: StartResponse, _: None) -> list[bytes]:
        if not self.accepting:
            return self._plain(start_response, "503 Service Unavailable", "shutting down\n")
        return self._plain(start_response, "200 OK", "ok\n")

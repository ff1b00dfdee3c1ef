"""The WSGI application: routes each request to a handler, short enough to read at once.

Plain WSGI, no framework, so it runs under ``python -m comet.server`` and under
gunicorn alike. Routes (docs/usage.rst, "HTTP interface"):

==================================  =======================================================
``GET /test/<id>``                  the seed's chunked stream: welcome, ticks, messages
``GET /events/<id>``                Server-Sent Events, resumable with ``Last-Event-ID``
``GET /poll/<id>``                  long-poll: JSON messages after ``?since=``
``GET /ws/<id>``                    WebSocket: messages as text frames
``POST /send/<id>``                 deliver the body to every connection logged in as ``<id>``
``POST /send``                      a batch: one ``{"id", "message"}`` JSON object a line
``POST /broadcast``                 deliver the body to every connection
``POST /subscribe/<subscriber>``    it follows each ``?to=`` id (``DELETE``: no more)
``GET /subscriptions/<id>``         whom ``<id>`` follows: a page after ``?after=``
``POST /notify/<id>``               deliver the body to every subscriber of ``<id>``
``POST /notify``                    a bulk notify: one ``{"id", "message"}`` a line
``GET /stats``                      counters and memory as JSON (``--metrics-from`` only)
``GET /metrics``                    the same figures for Prometheus (``--metrics-from`` only)
``GET /dashboard``                  a live page of them, fed by ``/dashboard/events`` (idem)
``GET /health``                     200 while serving and the broker is reachable, else 503
``GET /``                           a page that subscribes with EventSource and sends
==================================  =======================================================

Shared state (router, broker, counters, admission) is the hub's
(:mod:`comet.hub`); a subscriber's body and how it lives are
:mod:`comet.response`'s. docs/design.rst follows one request through them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from importlib import resources

from comet import dashboard, metrics, publishers, tokens
from comet.broker import BrokerUnavailable
from comet.broker.graph import FOLLOWING, GraphFull
from comet.burstlog import BurstLog
from comet.config import Settings
from comet.framing import framing_for
from comet.hub import RETRY_AFTER, Hub, Refused
from comet.inputs import (
    BadRequest,
    check_batch_type,
    check_id,
    followed_ids,
    ids_of,
    last_event_id,
    page_cursor,
    parse_batch,
    read_body,
)
from comet.limits import FOLLOWEES_PER_USER, METRICS_FROM, SUBSCRIBERS_PER_ID
from comet.ratelimit import RateLimiter, retry_after
from comet.response import PollResponse, StreamResponse, WebSocketResponse
from comet.stats import memory_by_line

log = logging.getLogger(__name__)

#: environ keys under which servers expose the client socket (ours, gunicorn's)
SOCKET_KEYS = ("comet.socket", "gunicorn.socket", "gunicorn.sock")

#: where refuses_websocket leaves a WebSocket subscriber's verified token expiry for the app
TOKEN_EXPIRES = "comet.token_expires"

#: transports a page on another origin may use when --allow-origin lets it
CORS_PREFIXES = ("/events/", "/poll/", "/ws/")

StartResponse = Callable[..., object]


#: a draining server's answers end their keep-alive connection: the client's next request
#: (a publisher's, say) opens a new one, which a server that stays accepts, instead of being
#: sent down a connection the drain is about to close (it would not know if it was taken)
CLOSE_WHILE_DRAINING = ("Connection", "close")


class CometApp:
    """``application(environ, start_response)`` over one :class:`~comet.hub.Hub`."""

    def __init__(self, settings: Settings, hub: Hub | None = None,
                 stats: Callable[[], dict] | None = None) -> None:
        self.settings = settings
        self.hub = hub if hub is not None else Hub(settings)
        #: what ``GET /stats`` answers: this process's hub, or (a worker's) the whole server
        self.stats = stats if stats is not None else self.hub.snapshot
        #: the dashboard streams, fed what /stats answers (read at each tick: a worker
        #: replaces self.stats with the whole server's after this)
        self.dashboards = dashboard.Dashboards(lambda: self.stats())
        #: verifies subscriber tokens; None: subscribing is open to anyone
        self.tokens = tokens.verifier_for(settings)
        #: who may publish: the configured keys (kept current), or loopback alone
        self.publishers = publishers.keys_for(settings)
        self.hub.publish_keys = self.publishers.fingerprints
        #: --publish-rate-per-key; None: unlimited
        self.limiter = (RateLimiter(settings.publish_rate_per_key)
                        if settings.publish_rate_per_key else None)
        #: one log line per burst of publisher refusals, per reason
        self._refusals = BurstLog(log, level=logging.INFO)
        self._allowed_origins = _origins(settings.allow_origin)
        self._routes = {
            "test": (self.test_stream, ("GET", "HEAD")),
            "events": (self.events, ("GET", "HEAD")),
            "poll": (self.poll, ("GET",)),
            "ws": (self.websocket, ("GET",)),
            "send": (self.send, ("POST",)),
            "subscribe": (self.subscribe, ("POST", "DELETE")),
            "subscriptions": (self.subscriptions, ("GET",)),
            "notify": (self.notify, ("POST",)),
        }
        self._exact = {
            "/": (self.page, ("GET", "HEAD")),
            "/broadcast": (self.broadcast, ("POST",)),
            "/send": (self.send_batch, ("POST",)),
            "/notify": (self.notify_batch, ("POST",)),
            "/stats": (self.stats_json, ("GET", "HEAD")),
            "/metrics": (self.metrics, ("GET", "HEAD")),
            "/dashboard": (self.dashboard, ("GET", "HEAD")),
            "/dashboard/events": (self.dashboard_events, ("GET",)),
            "/stats/memory": (self.memory_json, ("GET",)),
            "/health": (self.health, ("GET", "HEAD")),
        }

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        cors = self._cors_headers(environ, path)
        extra = cors if self.hub.accepting else [*cors, CLOSE_WHILE_DRAINING]
        respond = _with_headers(start_response, extra)
        try:
            handler, allowed, arg = self._route(path)
            if handler is None:
                raise BadRequest("404 Not Found", f"no such path {path[:80]!r}")
            if method == "OPTIONS" and cors:
                return self._preflight(respond)
            if method not in allowed:
                raise BadRequest("405 Method Not Allowed", f"{method} is not allowed here",
                                 (("Allow", ", ".join(allowed)),))
            return handler(environ, respond, arg)
        except BrokerUnavailable as down:
            # Never a 200 for a message that went nowhere; the client may try again.
            log.warning("503 %s %s: %s", method, path[:80], down)
            return self._broker_down(respond)
        except BadRequest as error:
            peer = environ.get("REMOTE_ADDR")
            line = ("%s %s %s: %s (client %s)", error.status[:3], method, path[:80],
                    error.reason, peer)
            if error.limit is not None:  # counted, and logged once per burst
                self.hub.refuse(error.limit, *line, peer=peer)
            elif not error.logged:  # a publisher's refusal is logged once per burst, above
                log.info(*line, extra={"event": "refused", "peer": peer,
                                       "status": int(error.status[:3])})
            return self._plain(respond, error.status, error.reason + "\n", error.headers)

    def _route(self, path: str) -> tuple:
        if not path.startswith("/"):  # "xws/a" is no /ws/ (a path pywsgi let through)
            return None, (), None
        head, _, rest = path[1:].partition("/")
        if head in self._routes and rest:
            return (*self._routes[head], rest)
        handler, allowed = self._exact.get(path, (None, ()))
        return handler, allowed, None

    # -- responses ----------------------------------------------------------

    @staticmethod
    def _plain(respond: StartResponse, status: str, text: str,
               headers: Iterable = ()) -> list[bytes]:
        body = text.encode()
        respond(status, [("Content-Type", "text/plain; charset=utf-8"),
                         ("Content-Length", str(len(body))), *headers])
        return [body]

    def _broker_down(self, respond: StartResponse) -> list[bytes]:
        return self._plain(respond, "503 Service Unavailable",
                           "message broker unavailable, try again later\n",
                           (("Retry-After", str(RETRY_AFTER)),))

    @staticmethod
    def _body(respond: StartResponse, content_type: str, body: bytes) -> list[bytes]:
        respond("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")])
        return [body]

    def _json(self, respond: StartResponse, value: dict) -> list[bytes]:
        return self._body(respond, "application/json", json.dumps(value).encode() + b"\n")

    # -- CORS -----------------------------------------------------------------

    def _cors_headers(self, environ: dict, path: str) -> list[tuple[str, str]]:
        origin = environ.get("HTTP_ORIGIN")
        if not origin or not self._allowed_origins or not path.startswith(CORS_PREFIXES):
            return []
        if "*" in self._allowed_origins:
            return [("Access-Control-Allow-Origin", "*")]
        if origin in self._allowed_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    @staticmethod
    def _preflight(respond: StartResponse) -> list[bytes]:
        respond("204 No Content", [("Access-Control-Allow-Methods", "GET"),
                                   ("Access-Control-Allow-Headers", "Last-Event-ID, Authorization"),
                                   ("Access-Control-Max-Age", "86400")])
        return []

    # -- subscribing ------------------------------------------------------------

    def _subscriber(self, environ: dict, ids: list[str], count: bool = True) -> float | None:
        """May this request log in as ``ids``? When its token runs out (None: no tokens).

        401 with ``WWW-Authenticate: Bearer`` for a missing or invalid token, 403
        for an id it does not cover; each counted by reason (unless ``count`` is
        False: a check made before a WebSocket upgrade, which the app makes again).
        """
        if self.tokens is None:
            return None
        if TOKEN_EXPIRES in environ:
            return environ[TOKEN_EXPIRES]
        try:
            claims = self.tokens.verify(tokens.token_of(environ))
        except tokens.TokenRefused as refused:
            if count:
                self.hub.refuse_subscriber(refused.reason)
            challenge = ('Bearer realm="comet"' if refused.reason == tokens.MISSING else
                         f'Bearer realm="comet", error="invalid_token", '
                         f'error_description="{refused.reason}"')
            raise BadRequest("401 Unauthorized", f"token refused: {refused.reason}",
                             (("WWW-Authenticate", challenge),)) from None
        if not self.tokens.covers(claims, ids):
            if count:
                self.hub.refuse_subscriber(tokens.NOT_COVERED)
            raise BadRequest("403 Forbidden", "the token does not cover every id asked for",
                             (("WWW-Authenticate",
                               'Bearer realm="comet", error="insufficient_scope"'),))
        return self.tokens.expires_at(claims)

    def _ids(self, path_id: str, environ: dict) -> list[str]:
        return ids_of(path_id, environ.get("QUERY_STRING", ""), self.settings.max_ids)

    def _admit(self, environ: dict, transport: str) -> tuple:
        """Room for one more connection? Returns whom it counts against (for
        ``--max-per-ip``, or None) and the socket a drop may shut down, if any."""
        client = self.hub.client(environ.get("REMOTE_ADDR"))
        try:
            self.hub.admit(client)
        except Refused as refused:
            raise BadRequest(refused.status, refused.reason,
                             (("Retry-After", str(refused.retry_after)),
                              ("Connection", "close")), limit=refused.kind) from None
        sock = next((environ[k] for k in SOCKET_KEYS if k in environ), None)
        if sock is not None and transport != "poll":
            sock.settimeout(self.settings.write_timeout)
        # A dropped WebSocket finishes its current frame (bounded by --write-timeout)
        # so that it can send close code 1008; other streams are cut at once.
        return client, sock if transport in ("test", "events") else None

    def _stream(self, environ: dict, respond: StartResponse, path_id: str,
                transport: str, resume_from: str | None = None) -> Iterable[bytes]:
        ids = self._ids(path_id, environ)
        expires = self._subscriber(environ, ids)
        framing = framing_for(transport, self.settings)
        headers = [("Content-Type", framing.content_type), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no")]
        if environ["REQUEST_METHOD"] == "HEAD":
            respond("200 OK", headers)
            return []
        client, sock = self._admit(environ, transport)
        respond("200 OK", headers)
        return StreamResponse(self.hub, framing, ids, resume_from, resume_from is not None, sock,
                              expires, client)

    def test_stream(self, environ: dict, respond: StartResponse,
                    path_id: str) -> Iterable[bytes]:
        return self._stream(environ, respond, path_id, "test")

    def events(self, environ: dict, respond: StartResponse, path_id: str) -> Iterable[bytes]:
        return self._stream(environ, respond, path_id, "events", last_event_id(environ))

    def poll(self, environ: dict, respond: StartResponse, path_id: str) -> Iterable[bytes]:
        ids = self._ids(path_id, environ)
        expires = self._subscriber(environ, ids)
        since = last_event_id(environ, header=None, param="since")
        framing = framing_for("poll", self.settings)
        client, _ = self._admit(environ, "poll")
        respond("200 OK", [("Content-Type", framing.content_type), ("Cache-Control", "no-store")])
        return PollResponse(self.hub, framing, ids, since, expires, client)

    def websocket(self, environ: dict, respond: StartResponse, path_id: str) -> Iterable[bytes]:
        ids = self._ids(path_id, environ)
        expires = self._subscriber(environ, ids)
        ws = environ.get("wsgi.websocket")
        if ws is None and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            # Not upgraded: held back by refuses_websocket, or a server that cannot
            # upgrade. A full or stopping server says so (503, counted here once).
            self._admit(environ, "ws")
        if ws is None:
            raise BadRequest("426 Upgrade Required",
                             "a WebSocket handshake is expected here (and a server that "
                             "speaks it: python -m comet.server, or gunicorn with "
                             "comet.gunicorn.Worker or geventwebsocket's GeventWebSocketWorker)",
                             (("Upgrade", "websocket"),))
        client, _ = self._admit(environ, "ws")
        return WebSocketResponse(self.hub, framing_for("ws", self.settings), ids, ws, expires,
                                 client)

    def refuses_websocket(self, handler) -> bool:
        """gevent-websocket's ``pre_start_hook``: True answers over plain HTTP, no upgrade.

        gevent-websocket completes the handshake before the app runs, so a bad
        id, a refused token or a full server could only be told with a close
        frame. Checked here first (asking the hub, counting nothing), such
        requests reach the app un-upgraded and get their 4xx (the 401 or 403
        of a token, counted there), or the 503 that the app's admission
        counts, like any other request. A token that passes is not verified
        twice: its expiry waits in the environ for the app.
        """
        environ = handler.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return False
        route, _, path_id = self._route(environ.get("PATH_INFO", "/"))
        if route != self.websocket:
            return True
        try:
            ids = self._ids(path_id, environ)
            expires = self._subscriber(environ, ids, count=False)
        except BadRequest:
            return True
        if expires is not None:
            environ[TOKEN_EXPIRES] = expires
        return self.hub.room(self.hub.client(environ.get("REMOTE_ADDR"))) is not None

    def shutdown(self) -> int:
        """End every connection, spread over --drain-seconds (blocks meanwhile); the
        dashboard streams end first (they are not counted: no client of the hub)."""
        self.dashboards.stop()
        return self.hub.shutdown(over=self.settings.drain_seconds)

    # -- publishing -----------------------------------------------------------

    def _publisher(self, environ: dict) -> str:
        """Who publishes (a key's fingerprint, or loopback): else a 401 or 403, counted,
        logged once per burst (a key guesser writes no line per guess)."""
        try:
            return self.publishers.identify(environ)
        except publishers.PublishRefused as refused:
            self.hub.refuse_publisher(refused.reason)
            self._refusals.log(f"publishers refused ({refused.reason})",
                               "publishers refused (%s): %s %s %s from %s", refused.reason,
                               refused.status[:3], environ["REQUEST_METHOD"],
                               environ.get("PATH_INFO", "")[:80], environ.get("REMOTE_ADDR"),
                               peer=environ.get("REMOTE_ADDR"))
            raise BadRequest(refused.status, refused.text, refused.headers,
                             logged=True) from None

    def _within_rate(self, environ: dict, who: str, messages: int) -> None:
        """429 with Retry-After when ``who`` is over --publish-rate-per-key."""
        if self.limiter is None:
            return
        wait = self.limiter.take(who, messages, self.publishers.identities)
        if wait is None:
            return
        self.hub.refuse_publisher(publishers.OVER_RATE, who, messages)
        self._refusals.log(f"publishers refused ({publishers.OVER_RATE})",
                           "publishers refused (%s): %d messages of publisher %s from %s",
                           publishers.OVER_RATE, messages, who, environ.get("REMOTE_ADDR"),
                           peer=environ.get("REMOTE_ADDR"))
        raise BadRequest("429 Too Many Requests",
                         f"over {self.limiter.rate:g} messages a second for this publisher",
                         (("Retry-After", retry_after(wait)),), logged=True)

    def _message(self, environ: dict) -> bytes:
        who = self._publisher(environ)
        self._within_rate(environ, who, 1)
        return read_body(environ, self.settings.max_message, self.settings.read_timeout)

    def send(self, environ: dict, respond: StartResponse, path_id: str) -> list[bytes]:
        id = check_id(path_id)
        message, delivered = self.hub.publish(id, self._message(environ))
        return self._json(respond, {"id": id, "message": message.id, "delivered": delivered})

    def send_batch(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        """Many messages for many ids in one request: every line checked, then all sent.

        One request per message caps a publisher at what a request costs; a
        batch pays it once. ``delivered`` counts this process's deliveries (None
        where the broker spans processes, as for ``POST /send/<id>``).
        """
        batch = self._batch(environ, "/send")
        counts = [delivered for _, delivered in self.hub.publish_many(batch)]
        delivered = None if None in counts else sum(counts)
        return self._json(respond, {"accepted": len(batch), "delivered": delivered})

    def _batch(self, environ: dict, route: str) -> list[tuple[str, bytes]]:
        """A batch request's ``(id, message)`` lines, every one checked before any is
        sent, within --max-batch and the publisher's rate (a message a line)."""
        who = self._publisher(environ)
        check_batch_type(environ, route)
        body = read_body(environ, self.settings.max_batch, self.settings.read_timeout)
        batch = parse_batch(body, self.settings.max_message)
        self._within_rate(environ, who, len(batch))
        return batch

    def broadcast(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        message, delivered = self.hub.broadcast(self._message(environ))
        return self._json(respond, {"message": message.id, "delivered": delivered})

    # -- subscriptions between users ------------------------------------------------

    def subscribe(self, environ: dict, respond: StartResponse, path_id: str) -> list[bytes]:
        """``POST``: the subscriber follows every ``?to=`` id, all or none (409 over a
        limit); ``DELETE``: it follows them no more. A publisher's request."""
        self._publisher(environ)
        subscriber = check_id(path_id)
        ids = followed_ids(subscriber, environ.get("QUERY_STRING", ""),
                           self.settings.max_follow_ids)
        if environ["REQUEST_METHOD"] == "DELETE":
            removed = self.hub.unfollow(subscriber, ids)
            return self._json(respond, {"id": subscriber, "unfollowed": removed})
        try:
            added = self.hub.follow(subscriber, ids)
        except GraphFull as full:
            if full.limit == FOLLOWING:
                why, kind = f"follows {full.bound} ids already (--max-following)", \
                    FOLLOWEES_PER_USER
            else:
                why, kind = f"has {full.bound} subscribers already (--max-followers)", \
                    SUBSCRIBERS_PER_ID
            raise BadRequest("409 Conflict", f"{full.id!r} {why}, the most allowed; "
                             "nothing was followed", limit=kind) from None
        return self._json(respond, {"id": subscriber, "followed": added})

    def subscriptions(self, environ: dict, respond: StartResponse,
                      path_id: str) -> list[bytes]:
        """Whom ``<id>`` follows, a page at a time in id order; a publisher's request,
        as the graph is the backend's to see."""
        self._publisher(environ)
        id = check_id(path_id)
        page = self.hub.following(id, page_cursor(environ.get("QUERY_STRING", "")))
        return self._json(respond, {"id": id, "following": page.following, "next": page.next})

    def notify(self, environ: dict, respond: StartResponse, path_id: str) -> list[bytes]:
        id = check_id(path_id)
        subscribers, delivered = self.hub.notify_many([(id, self._message(environ))])
        return self._json(respond, {"id": id, "subscribers": subscribers,
                                    "delivered": delivered})

    def notify_batch(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        """A bulk notify, for a backend acting for many users at once: each line's
        message to every subscriber of its id, the followers of all of them read in
        one round trip. ``subscribers`` sums each line's followers."""
        batch = self._batch(environ, "/notify")
        subscribers, delivered = self.hub.notify_many(batch)
        return self._json(respond, {"accepted": len(batch), "subscribers": subscribers,
                                    "delivered": delivered})

    # -- pages and introspection ------------------------------------------------

    def page(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        body = resources.files("comet").joinpath("static/index.html").read_bytes()
        return self._body(respond, "text/html; charset=utf-8", body)

    def _operator(self, environ: dict) -> None:
        """403 unless the peer is one --metrics-from lists: what the server holds and
        refuses is its operator's business. Counted and logged once per burst."""
        if environ.get("REMOTE_ADDR") not in self.settings.metrics_from:
            raise BadRequest("403 Forbidden", "not from this address (--metrics-from)",
                             limit=METRICS_FROM)

    def stats_json(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        self._operator(environ)
        return self._json(respond, self.stats())

    def metrics(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        """Prometheus's scrape: the figures of ``/stats`` (the whole server's, with
        workers), in the format the scraper's Accept asks for."""
        self._operator(environ)
        body, content_type = metrics.exposition(self.stats, environ.get("HTTP_ACCEPT"))
        return self._body(respond, content_type, body)

    def dashboard(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        self._operator(environ)
        return self._body(respond, "text/html; charset=utf-8", dashboard.page())

    def dashboard_events(self, environ: dict, respond: StartResponse,
                         _: None) -> Iterable[bytes]:
        """The dashboard's EventSource: a ``/stats`` snapshot an event (comet.dashboard)."""
        self._operator(environ)
        stream = self.dashboards.open(environ.get("QUERY_STRING", ""))
        respond("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                           ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        return stream

    def memory_json(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        self._publisher(environ)  # loopback or a key, as for publishing: it is costly
        return self._json(respond, memory_by_line())

    def health(self, environ: dict, respond: StartResponse, _: None) -> list[bytes]:
        if not self.hub.accepting:
            return self._plain(respond, "503 Service Unavailable", "shutting down\n")
        if not self.hub.broker.up:
            return self._broker_down(respond)
        return self._plain(respond, "200 OK", "ok\n")


def _origins(setting: str | None) -> frozenset[str]:
    return frozenset(o.strip() for o in (setting or "").split(",") if o.strip())


def _with_headers(start_response: StartResponse, extra: list) -> StartResponse:
    if not extra:
        return start_response

    def respond(status: str, headers: list, exc_info=None):
        return start_response(status, [*headers, *extra], exc_info)
    return respond

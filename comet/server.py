"""``python -m comet.server``: sockets and the process; the app lives in comet/app.py.

Owns: parsing settings, raising the open-files limit, the listening socket,
gevent's WSGIServer with our request handler, and a clean shutdown on
SIGTERM/SIGINT (stop accepting, end every stream with its final chunk, exit 0).
With ``--workers N`` above 1, :mod:`comet.master` runs instead, and each of its
workers (:mod:`comet.worker`) serves with the pieces here.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import signal
import socket as stdlib_socket
import sys
import tracemalloc

import gevent
import gevent.event
import gevent.pool
from gevent import pywsgi, socket
from geventwebsocket.handler import WebSocketHandler

from comet import config, fastpath, gate, limits, publishers, tokens
from comet.app import CometApp
from comet.broker import BrokerUnavailable
from comet.ends import CLIENT_GONE
from comet.handshake import checked_upgrade
from comet.hostlimits import connections_per_process, raise_open_files_limit, startup_problems

log = logging.getLogger("comet.server")

#: the line of a connection closed for sending no request within --read-timeout
NO_REQUEST = "closing %s: no request within %g s"

#: the request versions served: 1.0 and 1.1 (a later 1.x is answered as 1.1, RFC 9110
#: 2.5), and the 0.9 that pywsgi sets for a request line without a version
HTTP_VERSION = re.compile(r"HTTP/1\.[0-9]|HTTP/0\.9")

BAD_REQUEST_RESPONSE = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n")
#: the answer to a client whose headers stopped coming (pywsgi writes it as it is)
HEAD_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                         b"Content-Length: 0\r\n\r\n")


class HeadTooLarge(ValueError):
    """Headers over http.client's bounds (100 lines, 64 KiB a line): a 400, counted."""


class HeadTooSlow(ValueError):
    """Headers not all in within --read-timeout: a 408, counted."""


class CometHandler(WebSocketHandler):
    """pywsgi's handler (via gevent-websocket's, for /ws/), with the client socket
    in the environ and bounded reads.

    ``comet.socket`` lets a stream shut its socket down when the router drops it
    as a slow consumer and set its write timeout. A socket read timeout bounds
    how long a request (line, headers, body) may take to arrive, and so how long
    an idle keep-alive connection holds a greenlet.
    """

    #: seconds a client may take to send a request; set from --read-timeout
    read_timeout = 30.0
    #: let streams leave their greenlet once the headers are out; from --hibernate
    hibernate = True
    #: answer POST and DELETE requests that arrive whole on httptools; from --fast-path
    #: (off under gunicorn, whose handler logs and extends the environ its own way)
    fast_path = False

    def handle(self) -> None:
        self.socket.settimeout(self.read_timeout)
        # pywsgi sends headers and body in two writes: without NODELAY, Nagle and the
        # client's delayed ACK hold each keep-alive answer ~40 ms (seen by msggen).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.fast_path:
                rest = fastpath.serve(self)
                if rest is None:  # done: the file first, or the socket's close waits for it
                    self.rfile.close()
                    self.socket.close()
                    return
                if rest:  # a request after fast ones: what was read of it goes first
                    self.rfile = fastpath.replaying(rest, self.rfile)
            super().handle()
        except ConnectionError as exc:
            # pywsgi writes its refusals (400, 414, 408) unguarded: the client that
            # sent a bad head and left makes them a broken pipe or a reset
            log.info("%s left before its answer: %s", self._client(), exc.strerror or exc)

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["comet.socket"] = self.socket
        return environ

    def process_result(self) -> None:
        """The seam where a connection leaves pywsgi's request loop (``--hibernate on``).

        A response that can sleep (:mod:`comet.response`) logs in a record
        and gives its first bytes; they go out through pywsgi (status,
        headers, chunked framing); then the socket is handed to the record
        and pywsgi lets go of it, so this greenlet, the environ, the parsed
        headers and the read buffer all end here. A response answered at
        once (a long-poll with history) is written as any other, and
        keep-alive goes on in this greenlet. HTTP/1.0 clients, which cannot
        take chunks, keep the plain life.
        """
        if not (self.hibernate and self.request_version == "HTTP/1.1"
                and hasattr(self.result, "hibernate")):
            self._write_all()
            return
        conn, first = self.result.hibernate()
        if conn is None:
            self.result = [first]
            super().process_result()
            return
        try:
            if first or not self.headers_sent:
                self.write(first)
        except OSError:
            conn.finish(CLIENT_GONE)
            raise
        self._hand_over(conn)

    def _write_all(self) -> None:
        """pywsgi writes the body (the plain life); a write blocked past --write-timeout
        is the response's to count (it drops its connection) before pywsgi closes it."""
        try:
            super().process_result()
        except TimeoutError:
            timed_out = getattr(self.result, "write_timed_out", None)
            if timed_out is not None:
                timed_out()
            raise

    def run_websocket(self) -> None:
        """The same seam for an upgraded /ws/ request; its handshake is already written.

        gevent-websocket would iterate the app's answer and park this greenlet
        in it; a response that can sleep is instead handed the socket.
        """
        result = self.application(self.environ, lambda *args: None)
        if not (self.hibernate and hasattr(result, "hibernate")):
            self._iterate_websocket(result)
            return
        conn, _ = result.hibernate()
        self.websocket.closed = True  # gevent-websocket must not close it: it is the conn's
        self.websocket = None
        self.environ["wsgi.websocket"] = None
        self._hand_over(conn)

    def _hand_over(self, conn) -> None:
        """Give the socket to ``conn`` for good; it may hand it back for the next request."""
        self.close_connection = True
        # The connection owns the descriptor now: detached, neither pywsgi nor
        # the server's close-when-done closes it, and gevent's watchers go.
        sock, self.socket = self.socket, None
        server, address = self.server, self.client_address

        def resume(raw: stdlib_socket.socket) -> None:
            """A long-poll answered: the client's next request, in a new greenlet.

            Not through the server's pool: a full pool would block the greenlet that
            answered the poll (the broker's reader, whose subscription confirmations
            the pool's handshakes may be waiting for)."""
            if server.closed:  # stopping: no next request
                raw.close()
                return
            gevent.spawn(serve_resumed, socket.socket(fileno=raw.detach()), address)

        def serve_resumed(sock: socket.socket, address) -> None:
            try:
                server.handle(sock, address)
            finally:
                sock.close()  # a no-op once a hibernating poll has taken its descriptor

        conn.wake(stdlib_socket.socket(fileno=sock.detach()), resume)

    def _iterate_websocket(self, result) -> None:
        try:
            list(result)
        finally:
            if self.websocket is not None and not self.websocket.closed:
                self.websocket.closed = True
            self.environ["wsgi.websocket"] = None
            self.websocket = None

    #: requests this connection has made so far (a timeout before the first is a refusal,
    #: after one it is an idle keep-alive connection closing)
    requests = 0

    def handle_one_request(self):
        answer = super().handle_one_request()
        if isinstance(answer, tuple) and answer[0] == "414":
            self._refuse(limits.REQUEST_LINE_TOO_LONG, "414 from %s: request line over %d bytes",
                         self._client(), pywsgi.MAX_REQUEST_LINE)
        self.requests += 1
        return answer

    def read_requestline(self) -> str:
        try:
            return super().read_requestline()
        except TimeoutError:
            self.no_request_in_time()
            raise

    def no_request_in_time(self) -> None:
        """--read-timeout passed with no request: a refusal before the first, after one
        an idle keep-alive connection closing."""
        if self.requests:
            log.info(NO_REQUEST, self._client(), self.read_timeout)
        else:
            self._refuse(limits.HEAD_TOO_SLOW, NO_REQUEST, self._client(), self.read_timeout)

    def _check_http_version(self) -> bool:
        """pywsgi's check, strictly: ``HTTP/1.<digit>`` (or the 0.9 it sets itself).

        Its own splits the version at dots and calls ``int`` on each part, so
        "HTTP/1" raised IndexError (a traceback in the log) and "HTTP/1.1_0" or
        "HTTP/ 1.1" passed. False here is pywsgi's 400 "Invalid http version".
        """
        return HTTP_VERSION.fullmatch(self.request_version) is not None

    def read_request(self, raw_requestline: str) -> bool:
        try:
            ok = super().read_request(raw_requestline)
        except http.client.HTTPException as exc:
            # http.client's header parser: "got more than 100 headers", "header line too
            # long"; a client error (400 with a log line), not a traceback.
            raise HeadTooLarge(f"bad header block: {exc}") from None
        except TimeoutError:
            raise HeadTooSlow(f"headers not received within {self.read_timeout:g} s") from None
        defects = getattr(self.headers, "defects", None)
        if defects:
            # e.g. a header line without a colon: pywsgi would drop the rest silently
            raise ValueError(f"malformed header block: {type(defects[0]).__name__}")
        return ok

    def upgrade_websocket(self) -> list | None:
        return checked_upgrade(self, super().upgrade_websocket)  # a bad one: 400/426, not 500

    def _handle_client_error(self, ex: Exception):
        if isinstance(ex, ConnectionError):
            # the client reset the connection mid-head: gone, nothing to answer
            log.info("%s left before its headers ended: %s", self._client(),
                     ex.strerror or ex)
            return None
        if isinstance(ex, (HeadTooSlow, TimeoutError)):
            # the headers stopped coming: pywsgi would print a traceback and say 400
            self._refuse(limits.HEAD_TOO_SLOW, "408 from %s: headers not received within %g s",
                         self._client(), self.read_timeout)
            return "408", HEAD_TIMEOUT_RESPONSE
        if isinstance(ex, HeadTooLarge):
            self._refuse(limits.HEAD_TOO_LARGE, "400 from %s: %s", self._client(), ex)
            return "400", BAD_REQUEST_RESPONSE
        log.info("400 from %s: %s", self._client(), tokens.redacted(str(ex)))
        return super()._handle_client_error(ex)

    def _refuse(self, kind: str, message: str, *args) -> None:
        refuse(self.server.application, kind, message, *args, peer=self._client())

    def log_error(self, msg: str, *args) -> None:
        """pywsgi's own error lines (a malformed request line quoted whole among them),
        with any ``token=`` value hidden."""
        try:
            message = msg % args if args else msg
        except (TypeError, ValueError):
            message = f"{msg!r} {args!r}"
        super().log_error(tokens.redacted(message))

    def handle_error(self, t, v, tb) -> None:
        if isinstance(v, TimeoutError):
            # A write blocked past --write-timeout, or a body slower than --read-timeout.
            log.info("closing %s: %s timed out", self._client(),
                     tokens.redacted(getattr(self, "requestline", None) or "request"))
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def _client(self) -> str:
        return peer_name(self.client_address)

    def log_request(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", self.format_request(),
                      extra={"event": "request", "peer": self._client(),
                             "status": getattr(self, "code", None)})

    def log_fast_request(self, environ: dict) -> None:
        """The access line (DEBUG) of a request the fast path answered."""
        if log.isEnabledFor(logging.DEBUG):
            query = environ["QUERY_STRING"]
            line = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
            if query:
                line += "?" + query
            log.debug("%s - \"%s HTTP/1.1\" %s", self._client(), tokens.redacted(line), self.code,
                      extra={"event": "request", "peer": self._client(), "status": self.code})

    def format_request(self) -> str:
        """pywsgi's access log line, whose request line carries the query string: a
        subscriber's ``?token=`` is hidden in it (``token=[redacted]``)."""
        return tokens.redacted(super().format_request())


def listen(host: str, port: int, backlog: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket. With ``reuse_port`` it is one worker's of several on one
    port (SO_REUSEPORT): each worker its own socket, the kernel spreads the
    connections among them, and a worker that dies takes no one else's queue."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    return listener


def backlog(settings: config.Settings) -> int:
    return min(65535, max(1024, settings.max_connections))


def peer_name(address) -> str:
    """A client's address as log lines and counters name it: the host of (host, port)."""
    return address[0] if isinstance(address, tuple) else str(address)


def refuse(application, kind: str, message: str, *args, peer: str) -> None:
    """A request over a limit of the HTTP layer: counted by the hub and logged once
    per burst (a server with another application only logs it)."""
    hub = getattr(application, "hub", None)
    if hub is not None:
        hub.refuse(kind, message, *args, peer=peer)
    else:
        log.info(message, *args)


def make_server(settings: config.Settings, app: CometApp,
                listener: socket.socket | None = None) -> pywsgi.WSGIServer:
    if listener is None:
        listener = listen(settings.host, settings.port, backlog(settings))
    handler = type("Handler", (CometHandler,), {"read_timeout": settings.read_timeout,
                                                "hibernate": settings.hibernate,
                                                "fast_path": settings.fast_path})
    # With hibernation a request's greenlet lives only until its connection sleeps,
    # so a bounded pool bounds the logins in flight: beyond it new connections wait
    # in the listen backlog (gevent stops accepting while the pool is full) rather
    # than each wait longer for the broker. In the plain life every connection keeps
    # its greenlet: unbounded there, only so that stop() can wait for the handlers.
    # A connection enters that pool once it has sent something (comet.gate): silent
    # ones must not hold it.
    pool = gevent.pool.Pool(settings.max_handshakes if settings.hibernate else None)
    server_class = gate.GatedWSGIServer if settings.hibernate else pywsgi.WSGIServer
    server = server_class(listener, app, handler_class=handler, spawn=pool,
                          log=logging.getLogger("comet.access"),
                          error_log=logging.getLogger("comet.error"))
    if isinstance(server, gate.GatedWSGIServer):
        server.first_bytes_timeout = settings.read_timeout

        def refuse_silent(address) -> None:
            peer = peer_name(address)
            refuse(app, limits.HEAD_TOO_SLOW, NO_REQUEST, peer, settings.read_timeout,
                   peer=peer)

        server.refuse_silent = refuse_silent
    server.pre_start_hook = app.refuses_websocket
    return server


def announce_limits(settings: config.Settings) -> None:
    """Raise the open-files limit and say what it and the kernel leave room for.

    Once per server: a master does it before forking, and its workers inherit
    the raised limit (log lines once, not once per worker).
    """
    limit = raise_open_files_limit()
    streams = connections_per_process(limit)
    log.info("open-files limit %d: room for about %d connections in this process",
             limit, streams)
    for problem in startup_problems(settings.max_connections, settings.port):
        log.warning("tuning: %s", problem)


def stop_signals() -> gevent.event.Event:
    """An event set by SIGTERM or SIGINT; install it before saying you are ready."""
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    return stopping


def take_waiting(server: pywsgi.WSGIServer) -> int:
    """Stop accepting, but first take the connections already queued on the listener.

    A worker's listener is one of several on its port: closing it resets the
    connections the kernel queued on it (already hashed to it, so no other
    worker can take them). Taken here, they are answered by a server that is
    shutting down (a stream gets 503 and Retry-After) instead of a reset.
    What lands between the last accept and the close, microseconds later, is
    still reset unless ``net.ipv4.tcp_migrate_req`` is 1 (docs/usage.rst).
    """
    server.stop_accepting()
    taken = 0
    while (waiting := server.do_read()) is not None:
        server.do_handle(*waiting)
        taken += 1
    return taken


def drain(settings: config.Settings, app: CometApp, server: pywsgi.WSGIServer) -> None:
    """Stop accepting, end every stream with its farewell (spread over --drain-seconds),
    then wait for their last writes up to --shutdown-timeout."""
    server.close()
    log.info("shutting down: stopped accepting")
    log.info("told %d connections to come back", app.shutdown())
    server.stop(timeout=settings.shutdown_timeout)
    log.info("stopped")


def serve(settings: config.Settings) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    if settings.tracemalloc:
        tracemalloc.start(settings.tracemalloc)
    announce_limits(settings)
    app = CometApp(settings)
    server = make_server(settings, app)
    server.start()
    app.hub.counters.reset_baseline()
    host, port = server.address[:2]
    stopping = stop_signals()
    # One process: SIGHUP re-reads the publisher key file (a master's means a rolling restart).
    gevent.signal_handler(signal.SIGHUP, app.publishers.reload)
    log.info("serving on http://%s:%d/ (pid %d)", host, port, os.getpid())
    stopping.wait()
    drain(settings, app, server)
    return 0


def announce_subscribing(settings: config.Settings) -> int | None:
    """Check the token settings and say once who may subscribe; 2 if they are unusable.

    Done before anything serves or forks, so that a bad key file stops the
    server at once with one line, and every worker inherits the keys read here.
    """
    try:
        verifier = tokens.verifier_for(settings)
    except tokens.TokenSettingsError as exc:
        log.error("%s", exc)
        return 2
    if verifier is None:
        log.warning("subscribing is open to anyone: no token setting")
    else:
        log.info("subscribers need a token: %s", verifier.describe)
    return None


def announce_publishing(settings: config.Settings) -> int | None:
    """Check the publisher keys and say once who may publish; 2 if they are unusable.

    Before anything serves or forks, like the token settings: an unreadable or
    empty key file stops the server with one line. Never a key in it: counts,
    sources and, for a key too short, its fingerprint.
    """
    try:
        keys = publishers.keys_for(settings)
    except publishers.PublisherSettingsError as exc:
        log.error("%s", exc)
        return 2
    if not keys.configured:
        log.info("publishing is for loopback clients only: no publisher key")
        return None
    log.info("publishers need a key: %s", keys.describe())
    for name in keys.short_keys():
        log.warning("publisher key %s is shorter than %d characters: use a long random one",
                    name, publishers.SHORT_KEY)
    return None


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    config.configure_logging(settings.log_level, settings.log_format)
    refused = announce_subscribing(settings) or announce_publishing(settings)
    if refused is not None:
        return refused
    if settings.workers > 1:
        from comet import master  # not at the top: the master and its workers import this

        return master.run(settings)
    try:
        return serve(settings)
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", settings.host, settings.port, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

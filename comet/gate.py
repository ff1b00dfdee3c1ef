"""Accepted connections wait for their first bytes on a watcher, not in the server's pool.

Why: with hibernation the server's pool (``--max-handshakes``) bounds the
requests a process works on, and gevent stops accepting while it is full. A
connection that has sent nothing yet is not a request being worked on; in
the pool, that many silent sockets (a cheap attack, or a browser's
speculative preconnects) kept every new client in the listen backlog until
``--read-timeout`` closed them (measured: 2 silent sockets against
``--max-handshakes 2 --read-timeout 5``, a third client's ``GET /health``
answered after 4.8 s). Here such a connection costs a read watcher and a
timer, like a sleeping stream, and enters the pool when its bytes arrive.

A crowd is taken as before: its requests are there when it is accepted, so
its connections go straight to the pool, and while the pool is full gevent
stops accepting and the rest wait in the backlog. Connections whose bytes
arrive while the pool is full queue here, in order, and a feeder greenlet
starts them as room frees; one that stays silent for ``--read-timeout`` is
refused (counted as "request head too slow") and closed.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable

import gevent
from gevent import pywsgi

log = logging.getLogger("comet.server")


class GatedWSGIServer(pywsgi.WSGIServer):
    """pywsgi's server, whose pool takes a connection once it has sent something."""

    #: seconds a connection may stay silent before it is refused; from --read-timeout
    first_bytes_timeout = 30.0
    #: called with the address of a connection closed for its silence (counts and logs
    #: it as the handler does a slow request line); set by comet.server.make_server
    refuse_silent: Callable[[tuple], None] | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ready: deque = deque()  # (socket, address): bytes came, no room yet
        self._feeder: gevent.Greenlet | None = None

    def do_handle(self, *args) -> None:
        """Runs in the accepting loop's callback: never blocks."""
        sock, address = args
        if not self._ready and not self.full() and _has_bytes(sock):
            self._spawn_handler(sock, address)
        else:
            self._park(sock, address)

    def _park(self, sock, address) -> None:
        """Wait for the connection's first bytes, or refuse it after the timeout."""
        watcher = self.loop.io(sock.fileno(), 1)
        timer = self.loop.timer(self.first_bytes_timeout)

        def done() -> None:
            watcher.stop()
            timer.stop()
            watcher.close()
            timer.close()

        def readable() -> None:
            done()
            if not self._ready and not self.full():
                self._spawn_handler(sock, address)
                return
            self._ready.append((sock, address))
            if self._feeder is None or self._feeder.dead:
                self._feeder = gevent.spawn(self._feed)

        def silent_too_long() -> None:
            done()
            if self.refuse_silent is not None:
                self.refuse_silent(address)
            sock.close()

        watcher.start(readable)
        timer.start(silent_too_long)

    def _feed(self) -> None:
        """Start the queued connections as the pool frees room, oldest first."""
        while self._ready:
            self.pool.wait_available()
            sock, address = self._ready.popleft()
            if self.closed:  # stopping: its client comes back, to another process
                sock.close()
                continue
            self._spawn_handler(sock, address)

    def _spawn_handler(self, sock, address) -> None:
        """pywsgi's own start of a connection (the pool has room: it does not wait)."""
        try:
            super().do_handle(sock, address)
        except Exception:  # it closed the socket; as gevent's accept loop, go on
            log.exception("starting the connection from %s failed", address[0])

    def stop(self, timeout=None) -> None:
        """Stop, closing what still waits here: no request of theirs has started."""
        super().stop(timeout)
        while self._ready:
            self._ready.popleft()[0].close()


def _has_bytes(sock) -> bool:
    """Are the connection's first bytes (or its end) already there? Never waits: a
    gevent socket with a zero timeout raises instead of waiting (the handler sets its
    own timeout first thing)."""
    sock.settimeout(0.0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:  # reset: the handler finds it so and closes it
        pass
    return True

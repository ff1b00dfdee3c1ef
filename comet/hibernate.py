"""Hibernated streams: an idle connection with no greenlet, as Erlang's hibernate.

Theory of operation
-------------------
Once the HTTP server has sent a stream's headers and first chunk, its
greenlet ends; what stays is a :class:`SleepingConnection`: the socket (non-
blocking), its ids, the transport's framing and a few counters, about a
hundred bytes where a parked greenlet costs ~8 KB.

* The router calls :meth:`~SleepingConnection.deliver`, which writes the
  framed chunk straight to the socket with one non-blocking ``send``. The
  frame is built once per message per transport (``Message.frames``), not
  once per connection, so a broadcast's loop does nothing but the writes.
* Ticks (``/test/``) and heartbeats (SSE) come from the shared
  :class:`~comet.timerwheel.TimerWheel`; at each one the connection also
  peeks at its socket, so a client that closed is logged out then.
* Only when a write would block (a slow reader) does the connection get a
  greenlet: :meth:`~SleepingConnection._flush` waits for the socket to drain,
  bounded by ``--write-timeout``, while later chunks queue up to
  ``--queue-limit``; past that the router drops it as a slow consumer.
* A write that fails (EPIPE, ECONNRESET) logs the connection out at once.

Until :meth:`~SleepingConnection.awake` the connection only queues: the HTTP
server is still writing the headers, and nothing may overtake them.
"""

from __future__ import annotations

import logging
import socket

import gevent
from gevent.socket import wait_write

log = logging.getLogger(__name__)


def framed(message, framing) -> bytes:
    """The chunk that carries ``message`` on ``framing``'s transport, built once per fan-out."""
    frames = message.frames
    if frames is None:
        frames = message.frames = {}
    data = frames.get(framing.name)
    if data is None:
        data = frames[framing.name] = framing.wire(framing.message(message))
    return data


class SleepingConnection:
    """A stream that holds a socket and no greenlet while idle."""

    __slots__ = (
        "ids",        #: ids logged in as (owned by the router)
        "framing",    #: the transport's Framing (shared by all its connections)
        "subs",       #: the server's Subscriptions: router, wheel, settings (shared)
        "sock",       #: the client's socket, non-blocking; None once closed
        "n",          #: the next tick's number (/test/ counts its chunks)
        "seen",       #: seq of the newest message written (replay dedupe)
        "slot",       #: the timer wheel list it waits in, or None
        "pending",    #: chunks not yet written, or None when the socket keeps up
        "writer",     #: the greenlet draining ``pending`` to a slow reader, or None
        "ended",      #: None while live, else why it ends
    )

    def __init__(self, subs, framing) -> None:
        self.ids: tuple[str, ...] = ()
        self.framing = framing
        self.subs = subs
        self.sock: socket.socket | None = None
        self.n = 1
        self.seen = 0
        self.slot = None
        self.pending: list | None = []  # asleep but not awake: queue behind the headers
        self.writer = None
        self.ended: str | None = None

    @property
    def transport(self) -> str:
        return self.framing.name

    def __repr__(self) -> str:
        return f"<SleepingConnection {','.join(self.ids)} on {self.transport}>"

    # -- the router's interface ---------------------------------------------------

    def deliver(self, message) -> bool:
        if self.ended is not None:
            return True  # ending: the message is moot, not a slow reader
        if message.seq <= self.seen:
            return True  # the replay already carried it
        self.seen = message.seq
        return self._write(framed(message, self.framing))

    def drop(self, reason: str) -> int:
        """The router gave up on a slow reader: close now, forget what is queued."""
        discarded = len(self.pending or ())
        log.debug("dropping %r: %s", self, reason)
        self._finish(reason)
        return discarded

    def end(self, reason: str) -> None:
        """Finish cleanly (server shutdown): farewell and last chunk, then close."""
        if self.ended is not None:
            return
        self.ended = reason
        self.subs.wheel.cancel(self)
        if (self._write(self.framing.ending(reason)) and self.pending is None
                and self.sock is not None):
            self._finish(reason)

    # -- life -----------------------------------------------------------------------

    def awake(self, sock: socket.socket) -> None:
        """The headers are out and ``sock`` is ours: write what queued, then wait for the timer."""
        if self.pending is None:  # dropped or ended before it woke
            sock.close()
            return
        sock.setblocking(False)
        self.sock = sock
        queued, self.pending = self.pending, None
        if queued and not self._write(b"".join(queued)):
            return
        if self.ended is None:
            self.subs.wheel.schedule(self, self._period())
        elif self.pending is None:  # ended while the headers went out: its ending is written
            self._finish(self.ended)

    def on_timer(self) -> None:
        """A tick or heartbeat is due: check the peer is there, then write it."""
        if self.sock is None or self.ended is not None:
            return
        if self._peer_closed():
            self._finish("client closed")
            return
        tick = self.framing.tick(self.n, self.ids[0] if self.ids else "")
        if self._write(self.framing.wire(tick)):
            self.n += 1
            if self.sock is not None and self.ended is None:
                self.subs.wheel.schedule(self, self._period())

    def _period(self) -> float:
        return getattr(self.subs.settings, self.framing.period)

    def _peer_closed(self) -> bool:
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- writing ----------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        """Write now if the socket takes it; else queue behind a writer greenlet.

        False: the connection cannot take it (its queue is full: the router
        drops it) or it is gone (it logged itself out: the router sees no ids).
        """
        if self.pending is not None:  # not awake yet, or a slow reader
            if len(self.pending) >= self.subs.settings.queue_limit:
                return False
            self.pending.append(data)
            return True
        if self.sock is None:
            return False
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._finish(f"client gone ({exc.strerror or exc})")
            return False
        if sent < len(data):
            self.pending = [data[sent:]]
            self.writer = gevent.spawn(self._flush)
        return True

    def _flush(self) -> None:
        """The only greenlet a sleeping connection ever has: drain to a slow reader."""
        timeout = self.subs.settings.write_timeout
        try:
            while self.pending:
                data = self.pending[0]
                wait_write(self.sock.fileno(), timeout=timeout)
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    continue
                if sent == len(data):
                    self.pending.pop(0)
                else:
                    self.pending[0] = data[sent:]
            self.pending = None
            self.writer = None
            if self.ended is not None:
                self._finish(self.ended)
        except socket.timeout:
            self.writer = None
            log.info("dropping %r: a write blocked for %g s", self, timeout)
            self.subs.router.slow_consumers += 1
            self._finish("write timed out")
        except OSError as exc:
            self.writer = None
            self._finish(f"client gone ({exc.strerror or exc})")

    def _finish(self, reason: str) -> None:
        """Close for good: off the wheel, out of the router, socket closed; once."""
        if self.sock is None and self.pending is None:
            return
        if self.ended is None:
            self.ended = reason
        self.subs.wheel.cancel(self)
        writer, self.writer = self.writer, None
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        self.pending = None
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.subs.close(self)

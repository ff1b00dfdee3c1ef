"""The sleeping life: an idle connection with no greenlet, as Erlang's hibernate.

Theory of operation
-------------------
Once the HTTP server has sent a connection's headers and first bytes, its
greenlet ends; what stays is a :class:`SleepingConnection`: the socket (non-
blocking), its ids, the transport's framing and a few counters, about a
hundred bytes where a parked greenlet costs ~8 KB.

* The router calls :meth:`~SleepingConnection.deliver`, which writes the
  framed message straight to the socket with one non-blocking ``send``. The
  bytes are built once per message per transport (the hub's
  :class:`~comet.hub.Outgoing`), not once per connection, so a broadcast's
  loop does nothing but the writes.
* Ticks (``/test/``), heartbeats (SSE) and pings (WebSocket) come from the
  shared :class:`~comet.timerwheel.TimerWheel`; at each one the connection
  also peeks at its socket, so a client that closed is logged out then.
* Only when a write would block (a slow reader) does the connection get a
  greenlet: :meth:`~SleepingConnection._flush` waits for the socket to drain,
  bounded by ``--write-timeout``, while later writes queue up to
  ``--queue-limit``; past that the hub drops it as a slow consumer.
* A write that fails (EPIPE, ECONNRESET) closes the connection at once.

Until :meth:`~SleepingConnection.wake` the connection only queues: the HTTP
server is still writing the headers, and nothing may overtake them.

A waiting long-poll (:class:`SleepingPoll`) is answered by its first message
or its timeout and hands the socket back to the HTTP server for the next
request; a WebSocket (:class:`SleepingWebSocket`) has a read watcher that
feeds what the client sends to a :class:`~comet.wsreader.FrameReader` right
in the event loop's callback, still with no greenlet.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import gevent
from gevent.socket import wait_write

from comet import ends, wire, wsreader
from comet.ends import End
from comet.life import Life, client_answer, reader_failure

#: hands a socket back to the HTTP server for the client's next request
Resume = Callable[[socket.socket], None]


class SleepingConnection(Life):
    """A stream that holds a socket and no greenlet while idle."""

    __slots__ = (
        "sock",       #: the client's socket, non-blocking; None once closed
        "n",          #: the next tick's number (/test/ counts its chunks)
        "slot",       #: the timer wheel list it waits in, or None
        "pending",    #: bytes not yet written, or None when the socket keeps up
        "writer",     #: the greenlet draining ``pending`` to a slow reader, or None
    )

    def __init__(self, hub, framing) -> None:
        super().__init__(hub, framing)
        self.sock: socket.socket | None = None
        self.n = 1
        self.slot = None
        self.pending: list | None = []  # asleep but not awake: queue behind the headers
        self.writer = None

    # -- the router's and the hub's interface ---------------------------------------

    def deliver(self, message) -> bool:
        if self.ended is not None:
            return True
        out = self.fresh(message)
        if out is None:
            return True
        return self._write(out.framed(self.framing))

    def drop(self, end: End) -> int:
        """The hub gave up on it (a slow reader): close now, forget what is queued."""
        discarded = len(self.pending or ())
        self.finish(end)
        return discarded

    def end(self, end: End) -> None:
        """Finish cleanly (server shutdown): the ending bytes after what is queued, then close."""
        if self.ended is not None:
            return
        self.ended = end
        self.hub.wheel.cancel(self)
        if (self._write(self.framing.ending(end)) and self.pending is None
                and self.sock is not None):
            self.finish(end)

    # -- life -------------------------------------------------------------------------

    def wake(self, sock: socket.socket, resume: Resume | None = None) -> None:
        """The headers are out and ``sock`` is ours: write what queued, then wait for the timer.

        ``resume`` is for a long-poll, which gives the socket back after its
        answer; a stream keeps it to the end.
        """
        if self.pending is None:  # dropped or ended before it woke
            sock.close()
            return
        sock.setblocking(False)
        self.sock = sock
        queued, self.pending = self.pending, None
        if queued and not self._write(b"".join(queued)):
            return
        if self.ended is None:
            self.hub.wheel.schedule(self, self._period())
        elif self.pending is None:  # ended while the headers went out: its ending is written
            self.finish(self.ended)

    def on_timer(self) -> None:
        """A tick or heartbeat is due: check the peer is there, then write it."""
        if self.sock is None or self.ended is not None:
            return
        if self._peer_closed():
            self.finish(ends.CLIENT_GONE)
            return
        tick = self.framing.tick(self.n, self.ids[0] if self.ids else "")
        if self._write(self.framing.wire(tick)):
            self.n += 1
            if self.sock is not None and self.ended is None:
                self.hub.wheel.schedule(self, self._period())

    def _period(self) -> float:
        return getattr(self.hub.settings, self.framing.period)

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

        False: the connection cannot take it (its queue is full: the hub
        drops it) or it is gone (it closed itself: the router sees no ids).
        """
        if self.pending is not None:  # not awake yet, or a slow reader
            if len(self.pending) >= self.hub.settings.queue_limit:
                return False
            self.pending.append(data)
            return True
        if self.sock is None:
            return False
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.finish(ends.CLIENT_GONE)
            return False
        if sent < len(data):
            self.pending = [data[sent:]]
            self.writer = gevent.spawn(self._flush)
        return True

    def _flush(self) -> None:
        """The only greenlet a sleeping connection ever has: drain to a slow reader."""
        timeout = self.hub.settings.write_timeout
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
                self.finish(self.ended)
        except TimeoutError:
            self.writer = None
            self.hub.drop(self, ends.WRITE_TIMEOUT)
        except OSError:
            self.writer = None
            self.finish(ends.CLIENT_GONE)

    def finish(self, end: End) -> None:
        """Close for good: off the wheel, socket closed, closed in the hub; once."""
        if self.sock is None and self.pending is None:
            return
        if self.ended is None:
            self.ended = end
        self.hub.wheel.cancel(self)
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
        self.hub.close(self)


class SleepingPoll(SleepingConnection):
    """A long-poll waiting with no greenlet: the first message, or the timeout, answers it.

    The answer is one chunk of JSON and the last chunk; then the socket goes
    back to the HTTP server for the client's next request (keep-alive), as if
    the request had been answered in its own greenlet.
    """

    __slots__ = ("resume", "last")

    def __init__(self, hub, framing, last: str | None) -> None:
        super().__init__(hub, framing)
        #: where an empty answer tells the client to go on from (None: from its own
        #: per stream position, made when it logs in)
        self.last = last
        #: hands the socket back to the HTTP server for the next request
        self.resume: Resume | None = None

    def wake(self, sock: socket.socket, resume: Resume | None = None) -> None:
        self.resume = resume
        super().wake(sock)  # waits on the timer wheel for --poll-timeout

    def deliver(self, message) -> bool:
        out = self.fresh(message) if self.ended is None else None
        if out is not None:
            self._answer([out], out.id)
        return True

    def on_timer(self) -> None:
        if self.sock is not None and self.ended is None:
            self._answer([], self.position(self.last))

    def end(self, end: End) -> None:
        """Server shutdown, or the token ran out: answer now, empty, and close, so the
        client polls again (the next server; with a fresh token). Counted as ``end``."""
        if self.ended is None:
            self._answer([], self.position(self.last), keep_alive=False, end=end)

    def _answer(self, messages: list, last: str, keep_alive: bool = True,
                end: End = ends.ANSWERED) -> None:
        self.ended = end
        self.hub.wheel.cancel(self)
        self._write(wire.chunk(wire.poll_answer(messages, last)) + wire.LAST_CHUNK)
        if self.pending is None and self.sock is not None:
            if not keep_alive or self.resume is None:
                self.finish(self.ended)
                return
            self.hub.close(self)  # this poll is done; the socket goes on
            sock, self.sock = self.sock, None
            self.resume(sock)  # next request on this connection, in a new greenlet
        # else: the write failed (finish closed it), or the writer drains the
        # answer to a slow reader and then finish closes it


class SleepingWebSocket(SleepingConnection):
    """A WebSocket with no greenlet while idle; a read watcher handles what the client sends."""

    __slots__ = (
        "watcher",  #: libev io watcher on the socket, while awake
        "reader",   #: the FrameReader of a frame half read, else None (made when data comes)
    )

    def __init__(self, hub, framing) -> None:
        super().__init__(hub, framing)
        self.watcher = None
        self.reader: wsreader.FrameReader | None = None

    def wake(self, sock: socket.socket, resume: Resume | None = None) -> None:
        super().wake(sock)
        if self.sock is not None:
            self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
            self.watcher.start(self._readable)

    def _readable(self) -> None:
        """The client sent something: read what is there, answer it, and sleep again.

        Runs in the event loop's callback: nothing here may block, and it
        does not (a non-blocking recv, writes that queue when they would block).
        """
        if self.sock is None:
            return
        try:
            data = self.sock.recv(wsreader.READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.finish(ends.CLIENT_GONE)
            return
        reader = self.reader or wsreader.FrameReader()
        try:
            reader.feed(data)
            while (event := reader.next_event()) is not None:
                reply, end = client_answer(event)
                if reply is not None:
                    self._write(reply)
                if end is not None:
                    self._close_with(end, reply is None)
                    return
        except (wsreader.ProtocolError, wsreader.MessageTooBig) as exc:
            self._close_with(reader_failure(self, exc), True)
            return
        self.reader = None if reader.idle else reader

    def _close_with(self, end: End, send_frame: bool) -> None:
        """Send the end's close frame, then close without a reset that would destroy it."""
        self.ended = end
        sock = self.sock
        if sock is not None:
            try:
                if send_frame and self.pending is None:
                    sock.send(self.framing.ending(end))
                sock.shutdown(socket.SHUT_WR)
                # Unread input at close() makes the kernel send RST, and a client
                # then loses the close frame: discard what has arrived (bounded).
                for _ in range(16):
                    if not sock.recv(4096):
                        break
            except OSError:
                pass
        self.finish(end)

    def drop(self, end: End) -> int:
        """Close a slow reader with 1008 after the frame being written, not mid-frame."""
        if self.writer is None:  # nothing half written (or not awake yet): close now
            discarded = len(self.pending or ())
            if self.sock is not None:
                self.pending = None  # nothing is half written: the close frame may go now
            self._close_with(end, True)
            return discarded
        # A frame may be half written: keep it, discard the rest, close after it;
        # the writer greenlet drains that much (bounded by --write-timeout), then ends.
        discarded = len(self.pending) - 1
        del self.pending[1:]
        self.pending.append(self.framing.ending(end))
        self.ended = end
        self.hub.wheel.cancel(self)
        if self.watcher is not None:
            self.watcher.stop()
        return discarded

    def finish(self, end: End) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        self.reader = None
        super().finish(end)

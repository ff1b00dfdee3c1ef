"""The plain life: a greenlet per connection, sleeping in its response iterator.

This is the design card's shape, and what any WSGI server runs
(``--hibernate off``, gunicorn's stock gevent worker): one greenlet per
connection yields what the client must read next and otherwise sleeps in
:meth:`PlainConnection.wait`, the way one Erlang process per connection
sleeps in ``receive`` in the seed. The router's ``deliver`` only appends to a
bounded deque and sets an event, so a send never waits on a socket; when the
deque is full the hub drops the connection: its queue is emptied and its
socket shut down, so a blocked write ends at once and memory stays bounded.

Three uses of one loop (:func:`stream_life`): a ``/test/`` or SSE stream
yields its pieces to the HTTP server, which chunks them; a WebSocket
(:func:`websocket_life`) writes them as frames itself while a second greenlet
reads the client; a long-poll (:func:`poll_life`) waits once. Whatever ends
the life, ``finally`` closes the connection in the hub.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable, Iterator

import gevent
from gevent.event import Event
from gevent.socket import wait_read

from comet import ends, wire, wsreader
from comet.ends import End
from comet.life import Life, client_answer, reader_failure


class PlainConnection(Life):
    """A subscriber whose greenlet waits: a bounded queue of messages and a wake-up."""

    __slots__ = (
        "_queue",    #: messages delivered but not yet written
        "_limit",    #: queue length at which the reader counts as too slow
        "_wakeup",   #: set when there is something to write or the connection must end
        "_socket",   #: the client socket when the server exposes it, to cut a blocked write
        "_control",  #: WebSocket frames owed to the client (pongs, the close reply), or None
    )

    def __init__(self, hub, framing, sock: socket.socket | None = None) -> None:
        super().__init__(hub, framing)
        self._queue: deque = deque()
        self._limit = hub.settings.queue_limit
        self._wakeup = Event()
        self._socket = sock
        self._control: list[bytes] | None = None

    def deliver(self, message) -> bool:
        if self.ended is not None:
            return True  # ending: the message is moot, not a slow reader
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(message)
        self._wakeup.set()
        return True

    def drop(self, end: End) -> int:
        """The hub gave up on it: forget what is queued and stop any blocked write."""
        discarded = len(self._queue)
        self.end(end)
        if self._socket is not None:
            try:
                # Wakes a greenlet blocked in sendall (EPIPE), without closing
                # the descriptor under the server's feet.
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return discarded

    def end(self, end: End) -> None:
        """Finish after what is queued if ``end`` flushes; else discard it."""
        if self.ended is None:
            self.ended = end
        if not end.flush:
            self._queue.clear()
        self._wakeup.set()

    def say(self, frame: bytes) -> None:
        """Queue a WebSocket control frame, written by the one writer before any message."""
        if self._control is None:
            self._control = []
        self._control.append(frame)
        self._wakeup.set()

    def take(self) -> list:
        """What is queued and not yet seen (a replay may have covered it), oldest first."""
        items = [out for out in map(self.fresh, self._queue) if out is not None]
        self._queue.clear()
        self._wakeup.clear()
        return items

    def wait(self, timeout: float) -> None:
        """Sleep until a delivery, an end, or ``timeout`` seconds."""
        if not self._queue and self.ended is None and not self._control:
            self._wakeup.wait(timeout)


def stream_life(conn: PlainConnection, begin: Callable[[Life], bytes]) -> Iterator[bytes]:
    """One connection's body pieces, from login to logout.

    ``begin(conn)`` logs in and returns the first piece (opening, replay);
    then messages as they come and a tick every period; at the end the
    framing's farewell. ``finally`` closes it in the hub, whatever ends it.
    """
    framing = conn.framing
    period = getattr(conn.hub.settings, framing.period)
    first = begin(conn)
    try:
        yield first
        n = 1
        next_tick = time.monotonic() + period
        while True:
            if conn._control:
                control, conn._control = conn._control, None
                yield from control
            for message in conn.take():
                yield framing.message(message)
            if conn.ended is not None:
                break
            now = time.monotonic()
            if now >= next_tick:
                yield framing.tick(n, conn.ids[0] if conn.ids else "")
                n += 1
                next_tick = max(next_tick + period, now)
            else:
                conn.wait(next_tick - now)
        farewell = framing.farewell(conn.ended)
        if farewell:
            yield farewell
    finally:
        conn.hub.close(conn)


def poll_life(conn: PlainConnection, begin: Callable[[Life], bytes | None],
              position: str | None) -> bytes:
    """The JSON answer of one long-poll: at once from history, or the first message, or none."""
    try:
        answer = begin(conn)
        if answer is None:
            conn.wait(conn.hub.settings.poll_timeout)
            messages = conn.take()
            answer = wire.poll_answer(messages, messages[-1].id if messages
                                      else conn.position(position))
        if conn.ended is None:
            conn.ended = ends.ANSWERED
        return answer
    finally:
        conn.hub.close(conn)


def websocket_life(conn: PlainConnection, begin: Callable[[Life], bytes], ws) -> None:
    """Write the stream's pieces as frames; a second greenlet reads the client.

    ``ws`` is gevent-websocket's socket wrapper after its handshake; only its
    raw reads and writes are used (its own frame reading and closing are
    broken: see :mod:`comet.wsreader`). One greenlet writes, so a pong never
    lands inside a message frame.
    """
    life = stream_life(conn, begin)
    reading = gevent.spawn(_read_client, conn, ws.handler.socket, ws.handler.rfile.read1)
    try:
        for piece in life:
            if piece:
                ws.raw_write(piece)
    except TimeoutError:
        conn.hub.drop(conn, ends.WRITE_TIMEOUT)
    except OSError:
        conn.end(ends.CLIENT_GONE)
    finally:
        ws.closed = True  # gevent-websocket must not send its own (malformed) close frame
        # Waited for, not only told: the reader waits on its own watcher of the socket's
        # descriptor, which the socket's close does not know of. Closed under a watcher
        # still started, the descriptor makes libev abort the whole process (EBADF in
        # epoll_ctl; found by the churn soak), or watches whatever takes its number next.
        reading.kill()
        life.close()


def _read_client(conn: PlainConnection, sock, read: Callable[[int], bytes]) -> None:
    """Read client frames until one ends the connection; pongs go through the writer.

    It waits for the socket to be readable before it reads: a buffered
    ``read1(n)`` allocates its n bytes before it blocks, which an idle
    connection would hold for its whole life (4 KB each, measured).
    """
    reader = wsreader.FrameReader()
    end = None
    try:
        while end is None:
            # No timeout: the socket's is --write-timeout (for the writer), and a
            # listening client may rightly send nothing for longer; a peer that
            # vanished is found by the writer (heartbeat pings, bounded writes).
            wait_read(sock.fileno())
            data = read(wsreader.READ_CHUNK)
            if not data:
                end = ends.CLIENT_GONE
                break
            reader.feed(data)
            while end is None and (event := reader.next_event()) is not None:
                reply, end = client_answer(event)
                if reply is not None:
                    conn.say(reply)
    except (wsreader.ProtocolError, wsreader.MessageTooBig) as exc:
        end = reader_failure(conn, exc)
    except OSError:
        end = ends.CLIENT_GONE
    conn.end(end)

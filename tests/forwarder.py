"""A TCP relay on 127.0.0.1 that a test can cut, hold and point at another port.

It stands between a client (the browser) and the server so a test can make the
network fail the way proxies and restarts make it fail: :meth:`Forwarder.cut`
shuts both sides of every live connection; :meth:`Forwarder.hold` keeps new
connections waiting (accepted, request read, nothing forwarded) until
:meth:`Forwarder.release`, so a test knows the client is disconnected while it
acts; :attr:`Forwarder.target_port` may change between connections (a new
server process behind the same address).

Plain threads and blocking sockets, one pair of pumps per connection. The
first request head of each connection is kept in :attr:`Forwarder.heads` so a
test can read what the client sent when it reconnected (``Last-Event-ID``).
"""

from __future__ import annotations

import socket
import threading
import time

HEAD_END = b"\r\n\r\n"


class Forwarder:
    """Relay 127.0.0.1:<port> to 127.0.0.1:<target_port>."""

    def __init__(self, target_port: int) -> None:
        #: where new connections go; read when a connection is forwarded
        self.target_port = target_port
        #: the first request head (up to the blank line) of every accepted connection
        self.heads: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._changed = threading.Condition()
        self._live: set[socket.socket] = set()
        self._open = threading.Event()
        self._open.set()
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    # -- what a test does ---------------------------------------------------------

    def cut(self) -> None:
        """Shut both sides of every live connection, as a dropped stream would."""
        with self._changed:
            live = list(self._live)
        for sock in live:
            _shutdown(sock)

    def hold(self) -> None:
        """From now on, accept and read new connections but forward nothing."""
        self._open.clear()

    def release(self) -> None:
        """Forward the held connections and every new one."""
        self._open.set()

    def wait_for_head(self, start: int, prefix: bytes, timeout: float = 15.0) -> bytes:
        """The first head after ``heads[start]`` that begins with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for head in self.heads[start:]:
                    if head.startswith(prefix):
                        return head
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no request {prefix!r} came; heads: {self.heads}")
                self._changed.wait(left)

    def stop(self) -> None:
        self._stopped = True
        self._acceptor.join(5)
        self._listener.close()
        self.cut()
        self.release()

    # -- the relay ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        self._track(client)
        try:
            first = _read_head(client)
            if not first:
                return
            with self._changed:
                self.heads.append(first.partition(HEAD_END)[0] + HEAD_END)
                self._changed.notify_all()
            self._open.wait()
            if self._stopped:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return  # nothing listens there (a restart): the client sees the close
            upstream.settimeout(None)
            self._track(upstream)
            upstream.sendall(first)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    _shutdown(sock)
                    self._untrack(sock)
                    sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._changed:
            self._live.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._changed:
            self._live.discard(sock)


def _read_head(sock: socket.socket) -> bytes:
    """Bytes read until a request head is complete (may hold more); b"" if none came."""
    data = b""
    while HEAD_END not in data:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until either side ends, then shut both so the other pump wakes up too."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        _shutdown(src)
        _shutdown(dst)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

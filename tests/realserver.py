"""Start the real comet server as a process on an ephemeral 127.0.0.1 port.

Tests talk to it over real sockets. The port comes from the server's own
"serving on" log line, so no port is ever guessed or reused. The two requests every
test module makes of a server, publishing (:func:`post`) and finding a port nobody
listens on (:func:`free_port`), live here once, with :func:`wait_until` for tests
that wait on a condition in this process rather than on the server's ``/stats``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import gevent
import requests

SERVING = re.compile(r"serving on http://\S+:(\d+)/")  # IPv6 too: http://::1:8000/


def post(server: RealServer, path: str, body: bytes = b"msg") -> dict:
    """Publish (``/send/<id>``, ``/broadcast``) and return the server's JSON answer.

    Every publish in the tests is meant to succeed, so anything but 200 fails here,
    with the body, instead of as a puzzling KeyError at the caller.
    """
    answer = requests.post(server.url + path, data=body, timeout=10)
    if answer.status_code != 200:
        raise AssertionError(f"POST {path}: {answer.status_code} {answer.text}")
    return answer.json()


def free_port() -> int:
    """A port nobody listens on (bound, then released): for a server started on it, or
    for the unreachable-server case."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(holds, timeout: float = 10.0, what: str = "condition") -> None:
    """Until ``holds()`` is true, yielding to this process's greenlets (timers, spawned
    work) between tries: a wait on a condition, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never held in {timeout} s")
        gevent.sleep(0.01)


def subscribed(server: RealServer, ids: int = 1) -> None:
    """Until the server's broker has ``ids`` subscriptions confirmed (with Redis: a
    publish from now on reaches them)."""
    server.wait_for(lambda s: s["broker"]["subscribed_ids"] >= ids, what=f"{ids} ids subscribed")


class RealServer:
    """One ``python -m comet.server`` process and what it logged."""

    def __init__(self, *args: str, env: dict | None = None, host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = ()) -> None:
        self.host = host
        self.args = ["--host", host, "--port", "0", *args]
        self.prefix = list(prefix)  #: a command the server runs under (ip netns exec NS)
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RealServer:
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "comet.server", *self.args], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                match = SERVING.search(line)
                if match:
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict:
        return requests.get(self.url + "/stats", timeout=10).json()

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> dict:
        """Poll /stats until ``predicate(stats)`` holds (a wait, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never held; last stats: {stats}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """The first log line containing ``text``, once there is one.

        The log reaches the test through a reader thread: a line the server has
        written (even one written before it exited) may not be in :attr:`lines` yet.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r} in {timeout} s:\n"
                                     + self.log_text())
            time.sleep(0.05)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

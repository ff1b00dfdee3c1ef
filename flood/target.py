"""The comet server a bench run measures: started on a free port, or given by ``--target``.

Owns that server's process (start, ``/health``, quiet CPU, stop), the pids its memory
is read from, and the HTTP requests bench sends it. It neither floods nor keeps
figures: :mod:`flood.measure` and :mod:`flood.timeline` ask it for what they need.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time

import gevent
import requests

from flood import memory


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 10.0):
    """A blocking request run in gevent's thread pool so the flood pipes keep draining."""
    def call():
        try:
            return requests.request(method, url, data=data, timeout=timeout)
        except requests.RequestException as exc:
            return exc
    answer = gevent.get_hub().threadpool.apply(call)
    if isinstance(answer, Exception):
        raise answer
    return answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """The server under test; :attr:`pids` stays empty until ``--server-pid`` or :meth:`start`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: The server bench started, or None when it measures ``--target``.
        self.process: subprocess.Popen | None = None
        #: The processes whose memory and CPU count as the server's.
        self.pids: list[int] = [args.server_pid] if args.server_pid else []
        #: Base URL without a trailing slash.
        self.url = (args.target or "").rstrip("/")
        #: Where a started server's output goes, named in errors.
        self.log_path = ""

    def start(self, out_dir: str) -> list[str]:
        """Start ``comet.server`` with room for the whole flood; the command, for the JSON."""
        port = self.args.port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
               "--interval", str(self.args.interval),
               "--max-connections", str(self.args.connections + 100),
               *shlex.split(self.args.server_args or "")]
        self.log_path = os.path.join(out_dir, f"bench-server-{port}.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.pids = [self.process.pid]
        return cmd

    def wait_healthy(self) -> None:
        """Until /health answers 200: a server just started, or one given by --target."""
        where = f"see {self.log_path}" if self.process else "is it running?"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"bench: the server exited {self.process.returncode}; {where}")
            try:
                if _http("GET", self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            gevent.sleep(0.2)
        raise SystemExit(f"bench: no /health from {self.url} in 30 s; {where}")

    def stop(self) -> None:
        """Stop the server bench started; one given by --target is left running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stats(self) -> dict | None:
        """``/stats``, or None: a server too busy to answer must not end the run."""
        try:
            return _http("GET", self.url + "/stats", timeout=10).json()
        except (requests.RequestException, ValueError):
            return None

    def wait_idle(self) -> None:
        """Warm the server up (one request of each kind), then wait for quiet CPU."""
        self.stats()
        procs = memory.process_tree(self.pids)
        for proc in procs:
            proc.cpu_percent(interval=None)  # the first call only starts the clock
        for _ in range(30):
            gevent.sleep(0.5)
            if sum(p.cpu_percent(interval=None) for p in procs) < 10:
                return

    def post(self, path: str, body: bytes, timeout: float = 10.0) -> requests.Response:
        """POST to the server (``/broadcast``) without blocking the flood pipes."""
        return _http("POST", self.url + path, data=body, timeout=timeout)

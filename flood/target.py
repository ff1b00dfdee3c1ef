"""The server under test of a bench run: one bench starts, or one given by ``--target``.

:class:`ServerUnderTest` is its processes (start, ``/health``, every ``--workers``
worker accepting, quiet CPU, stop), the pids its memory and CPU are read from, the
Redis it uses, and the requests bench sends it. A server is every process it is made
of: one, or a ``--workers`` master and the workers it forked, found again at each
reading because the master restarts a worker that dies. What is measured of it is
:mod:`flood.measure`'s.
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
import psutil
import requests

from flood import memory, publishkey, redisproc

#: Seconds after the server is ready before Redis is measured: Redis shrinks the query
#: buffer of a client idle for 2 s (tens of KB each, the server's connections just made),
#: and a "before" read ahead of that makes Redis seem to shrink while the flood subscribes.
REDIS_SETTLE = 3.0
#: Seconds a stopping server has: its own drain (``--shutdown-timeout``, 5 s) and a
#: master's grace for a worker past it (3 s), with room to spare.
STOP_TIMEOUT = 20.0


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 10.0,
          headers: dict | None = None):
    """A blocking request run in gevent's thread pool so the flood pipes keep draining."""
    def call():
        try:
            return requests.request(method, url, data=data, timeout=timeout, headers=headers)
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


def _running(proc: psutil.Process) -> bool:
    """Alive (the same process, not a reused pid) and not a zombie awaiting its parent."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ServerUnderTest:
    """The server under test: one process, or a ``--workers`` master and its workers.

    Its memory and CPU are those of every process it is made of, found again at each
    reading (:attr:`pids`) because a master restarts a worker that dies, and the
    newcomer's memory is the server's as much as the one it replaced.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: The server bench started, or None when it measures ``--target``.
        self.process: subprocess.Popen | None = None
        #: The server's own process (a master, with ``--workers``): bench started it or
        #: ``--server-pid`` named it; None until then.
        self.root: int | None = args.server_pid
        #: Every process :attr:`pids` ever found, by pid, in order: what must be gone after
        #: a run. A psutil.Process knows its start time, so a pid the system gave to
        #: another process since is never signalled by mistake.
        self.seen: dict[int, psutil.Process] = {}
        #: Base URL without a trailing slash.
        self.url = (args.target or "").rstrip("/")
        #: The Redis the server uses (bench's own, or ``--redis URL``), measured with it;
        #: None: the in-process broker. A server bench starts is given it as ``--redis``.
        self.redis_url: str | None = None
        #: That Redis's pid when bench started it (its RSS by psutil); else None.
        self.redis_pid: int | None = None
        #: Where a started server's output goes, named in errors.
        self.log_path = ""
        #: When every process of the server was accepting (:meth:`wait_workers`).
        self.ready_at = 0.0
        #: The publisher key bench's broadcasts carry (None: none, loopback publishes).
        self.publish_key = publishkey.client_key(getattr(args, "publish_key_file", None))

    @property
    def pids(self) -> list[int]:
        """The server's process and its children now (a master's workers), root first."""
        return [proc.pid for proc in self.processes()]

    def processes(self) -> list[psutil.Process]:
        """The server's processes now, each also kept in :attr:`seen`."""
        found = memory.process_tree([self.root]) if self.root is not None else []
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def start(self, out_dir: str) -> list[str]:
        """Start ``comet.server`` with room for the whole flood; the command, for the JSON."""
        port = self.args.port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
               "--interval", str(self.args.interval),
               "--max-connections", str(self.args.connections + 100)]
        if self.args.workers:
            cmd += ["--workers", str(self.args.workers)]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        cmd += shlex.split(self.args.server_args or "")
        self.log_path = os.path.join(out_dir, f"bench-server-{port}.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.root = self.process.pid
        return [redisproc.redacted(a) if a == self.redis_url else a for a in cmd]

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

    def wait_workers(self) -> None:
        """With ``--workers N``: until /stats counts N workers accepting, not just one.

        /health answers as soon as one worker accepts; a flood started then would
        all go to that one, and the memory taken before would miss the others.
        """
        want = self.args.workers or 1
        deadline = time.time() + 30
        while time.time() < deadline:
            answer = self.stats() or {}
            ready = [w for w in answer.get("workers") or [] if w.get("accepting")]
            if want < 2 or len(ready) >= want:
                self.ready_at = time.time()
                return
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"bench: the server exited {self.process.returncode}; "
                                 f"see {self.log_path}")
            gevent.sleep(0.2)
        raise SystemExit(f"bench: {want} workers not all accepting in 30 s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the server bench started, by pid; one given by --target is left running.

        SIGTERM to the master stops its workers; a worker still there once the master
        is gone (killed after its grace, or dead before bench stopped it) is stopped by
        its own pid, so no process of the run outlives it.
        """
        if self.process is None:
            return
        self.processes()  # into seen: a worker forked since the last sample
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in self.seen.values():
            if proc.pid == self.process.pid or not _running(proc):
                continue
            try:
                proc.terminate()
                proc.wait(timeout=STOP_TIMEOUT)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def stats(self) -> dict | None:
        """``/stats``, or None: a server too busy to answer must not end the run."""
        try:
            return _http("GET", self.url + "/stats", timeout=10).json()
        except (requests.RequestException, ValueError):
            return None

    def whole_stats(self, tries: int = 3) -> dict | None:
        """``/stats`` with every worker in its sums, if a few tries give that.

        A worker that does not answer its sibling in time is an ``error`` entry and
        is left out of the sums (``ids`` among them), which would then pass for the
        whole server's; the last answer is returned whatever it holds.
        """
        answer = None
        for _ in range(tries):
            answer = self.stats()
            if answer and not any("error" in w for w in answer.get("workers") or []):
                break
            gevent.sleep(0.5)
        return answer

    def warm_up(self, count: int, timeline) -> dict:
        """Open ``count`` /test/ streams (the kernel spreads them over the workers), send
        them one broadcast, close them: every worker has then run its whole path once.

        A forked worker shares the master's pages until it writes to them (reference
        counts, the collector), and builds some things on first use; without this, a
        whole worker's worth of such copies would be divided among the connections
        measured. Returns what was done, for the JSON.
        """
        host, port = self.url.rsplit("/", 1)[-1].rsplit(":", 1)
        socks = []
        try:
            for n in range(count):
                sock = socket.create_connection((host, int(port)), timeout=10)
                sock.sendall(f"GET /test/warmup-{n} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                             .encode())
                socks.append(sock)
            for sock in socks:
                sock.recv(4096)  # the head and the welcome chunk
            answer = self.post("/broadcast", b"warm-up")
        finally:
            for sock in socks:
                sock.close()
        timeline.log(f"bench: warmed up with {len(socks)} streams and one broadcast "
                     f"({answer.status_code if socks else 'no streams'})")
        return {"streams": len(socks), "broadcast_status": answer.status_code}

    def wait_idle(self) -> None:
        """Warm the server up (one request of each kind), then wait for quiet CPU, and
        with Redis until its clients' buffers have settled (:data:`REDIS_SETTLE`)."""
        self.stats()
        procs = self.processes()
        for proc in procs:
            proc.cpu_percent(interval=None)  # the first call only starts the clock
        for _ in range(30):
            gevent.sleep(0.5)
            if sum(p.cpu_percent(interval=None) for p in procs) < 10:
                break
        if self.redis_url:
            gevent.sleep(max(0.0, self.ready_at + REDIS_SETTLE - time.time()))

    def post(self, path: str, body: bytes, timeout: float = 10.0) -> requests.Response:
        """POST to the server (``/broadcast``) without blocking the flood pipes, with the
        publisher key (``--publish-key-file``, ``$COMET_PUBLISH_KEY_FOR_CLIENT``) if any."""
        return _http("POST", self.url + path, data=body, timeout=timeout,
                     headers=publishkey.headers(self.publish_key))

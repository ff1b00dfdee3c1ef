"""Real ``redis-server`` processes for the tests.

A broker spanning processes is only as good as its behaviour when Redis restarts,
stalls, loses its data or moves a slot, and no fake shows that; so the tests start
Debian's ``redis-server`` themselves, never a system service: on free 127.0.0.1
ports, in a temp dir of their own, with persistence off (a restart is a Redis that
lost its data), stopped by pid.

Redis cannot listen on port 0 (``--port 0`` means "no TCP at all"), so a port is
picked by binding and releasing a socket, and taken again if another process won it
in between. Every child started here is also killed at exit (``atexit``), so not
even an interrupted run leaves a Redis behind.

Without ``redis-server`` (or redis-py) :func:`redis_binary_or_skip`
skips the test, except under ``CI=true`` where it fails: CI installs them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

try:
    import redis
except ImportError:  # redis_binary_or_skip says so; the rest of the suite still runs
    redis = None

HOST = "127.0.0.1"
#: how many free ports to try before giving up on a start (others take ports too)
PORT_ATTEMPTS = 5

#: pid -> process of every redis-server still running, for the atexit net
_RUNNING: dict[int, subprocess.Popen] = {}
#: every temp dir not yet removed, for the atexit net
_DIRS: set[str] = set()


class PortTaken(RuntimeError):
    """redis-server could not bind a port it was given: another process took it first."""


def redis_binary_or_skip(*binaries: str) -> None:
    """Skip (locally) or fail (``CI=true``) unless the binaries and redis-py are here.

    A developer without Redis still runs the rest of the suite; CI must not pass
    by skipping what it was meant to test.
    """
    missing = [name for name in binaries or ("redis-server",) if shutil.which(name) is None]
    if missing:
        missing = [f"{', '.join(missing)} not on PATH "
                   "(Debian: apt-get install redis-server redis-tools)"]
    if redis is None:
        missing.append("redis-py not installed (pip install redis)")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} but CI=true: .ci/run must install it")
    pytest.skip(reason)


def retries(count: int = 0) -> redis.retry.Retry:
    """A client retry policy of ``count`` immediate retries. redis-py 8 retries a
    connection error or timeout 10 times with a growing backoff by default, which
    turns a 0.2 s timeout into seconds and hides the very failure a test looks for."""
    return redis.retry.Retry(redis.backoff.NoBackoff(), count)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on: all bound at once, then released, so
    two of them are never the same port."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait(holds, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never held in {timeout} s")
        time.sleep(0.005)


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, its temp dir, its log; stopped by pid."""

    def __init__(self, *args: str, password: str | None = None, unixsocket: bool = False,
                 port: int | None = None) -> None:
        self.args = args
        self.password = password
        self.unixsocket = unixsocket
        #: a port asked for is tried once; otherwise free ones are picked, retried if taken
        self.fixed_port = port
        self.port: int | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.paused = False

    # -- life ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir = Path(tempfile.mkdtemp(prefix="comet-redis-"))
        _DIRS.add(str(self.dir))
        attempts = 1 if self.fixed_port else PORT_ATTEMPTS
        try:
            for attempt in range(attempts):
                try:
                    self._launch(self.fixed_port or free_ports(1)[0], timeout)
                    return self
                except PortTaken:
                    if attempt == attempts - 1:
                        raise
                    self._clear_dir()
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; the temp dir goes too."""
        self._halt(timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            _DIRS.discard(str(self.dir))
            self.dir = None

    def kill(self) -> None:
        """SIGKILL: a Redis that crashed. Its dir stays, so :meth:`restart` works after."""
        if self.alive:
            self.proc.kill()
        self._reap(10)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop and start again on the same port: with persistence off the new process
        is empty, which is what a test of "Redis lost its data" needs."""
        self._halt(timeout)
        self._launch(self.port, timeout)
        return self

    def pause(self) -> None:
        """SIGSTOP: a Redis that stalls (swap, a fork, a long script) but keeps its
        sockets, so clients hang until their own timeouts. Returns once it has stopped
        (``waitpid`` with ``WUNTRACED``), so the next command surely meets a stalled
        server."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.waitpid(self.proc.pid, os.WUNTRACED)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT, and return once it runs again."""
        os.kill(self.proc.pid, signal.SIGCONT)
        os.waitpid(self.proc.pid, os.WCONTINUED)
        self.paused = False

    def __enter__(self) -> RedisServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def unix_url(self) -> str:
        if not self.unixsocket:
            raise AttributeError("started without unixsocket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client of this server over TCP (password included); no retries
        unless asked for, so a failure shows at once."""
        return redis.Redis.from_url(self.url, **{"retry": retries(), **kwargs})

    def log_text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.dir / "console.log",
                                                         self.dir / "redis.log") if p.exists()]
        return "\n".join(parts)

    # -- inside -------------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        command = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(self.dir),
                   "--logfile", "redis.log", "--daemonize", "no", "--save", "",
                   "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.unixsocket:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return [*command, *self.args]

    def _launch(self, port: int, timeout: float) -> None:
        self.port = port
        with open(self.dir / "console.log", "ab") as console:
            self.proc = subprocess.Popen(self._command(port), cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT)
        _RUNNING[self.proc.pid] = self.proc
        self.paused = False
        probe = redis.Redis(host=HOST, port=port, password=self.password, retry=retries(),
                            socket_timeout=0.25, socket_connect_timeout=0.25)
        deadline = time.monotonic() + timeout
        try:
            while not self._answers(probe, self.proc.pid):
                if not self.alive:
                    self._reap(1)
                    log = self.log_text()
                    if "Address already in use" in log:
                        raise PortTaken(f"port {port} taken:\n{log[-600:]}")
                    raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
                if time.monotonic() > deadline:
                    self._halt(5)
                    raise RuntimeError(f"redis-server did not answer in {timeout} s:\n"
                                       + self.log_text()[-2000:])
                time.sleep(0.005)
        finally:
            probe.close()

    @staticmethod
    def _answers(probe, pid: int) -> bool:
        """Whether our process answers: the port may have gone to another process
        between picking and binding, and that one may answer too (or hang)."""
        try:
            return probe.info("server")["process_id"] == pid
        except redis.RedisError:        # refused, timed out, loading, someone else's
            return False

    def _halt(self, timeout: float) -> None:
        if not self.alive:
            self._reap(1)
            return
        self.proc.terminate()
        # a stopped process holds SIGTERM until it runs again
        os.kill(self.proc.pid, signal.SIGCONT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap(10)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)
            _RUNNING.pop(self.proc.pid, None)
            self.paused = False

    def _clear_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()


@atexit.register
def _kill_leftovers() -> None:
    """The net under every finalizer: a run that dies between start and stop still
    leaves no redis-server and no temp dir behind. By pid, never by name: other
    Redis processes on the host are not ours."""
    for proc in list(_RUNNING.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    _RUNNING.clear()
    for path in list(_DIRS):
        shutil.rmtree(path, ignore_errors=True)
    _DIRS.clear()

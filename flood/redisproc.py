"""The Redis a bench run uses: a ``redis-server`` bench starts (``--redis-server``), and
what any Redis holds (``INFO memory``, and its RSS when its pid is known).

Comet with ``--workers N`` needs a broker that spans processes, and that broker's
memory is part of what a connection costs: every worker subscribes each id it holds,
so Redis grows with the connections too. Bench starts Debian's ``redis-server``
itself rather than use a system service, so that nothing else's keys or clients are
in its figures and nothing is left behind: on a free 127.0.0.1 port, in a temp dir of
its own, persistence off (``--save "" --appendonly no``: no fork to snapshot a big
dataset mid-measurement, no file left), stopped by its pid. ``--redis URL`` instead
measures a Redis that is already running, through ``INFO`` alone.

Redis cannot listen on port 0 (``--port 0`` means "no TCP at all"), so a port is
picked by binding and releasing a socket, and another is tried if some process took
it in between. Started in bench's own process group, a Ctrl-C at the terminal
reaches it too; bench's cleanup stops it either way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
#: free ports tried before giving up (another process may take the one picked)
PORT_ATTEMPTS = 5
#: a stream's first node preallocated to 1 KB, not 4 KB: conf/redis.conf says why
STREAM_NODE_MAX_BYTES = 1024

#: seconds a started redis-server has to answer
START_TIMEOUT = 10.0
#: seconds a redis-server has to exit after SIGTERM before SIGKILL
STOP_TIMEOUT = 5.0
#: seconds an INFO may take: a Redis that stalls costs the figure, not the run
INFO_TIMEOUT = 5.0


class PortTaken(RuntimeError):
    """redis-server could not bind the port it was given."""


class RedisProcess:
    """One ``redis-server`` bench started; its log goes to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        #: the temp dir it runs in (its working dir; nothing is written there)
        self.dir: str | None = None
        self.log_path = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start it and return once it answers as itself; an error names its log."""
        if shutil.which("redis-server") is None:
            raise SystemExit("bench: --redis-server needs redis-server on PATH "
                             "(Debian: apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._launch(_free_port())
                return self
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    self.stop()
                    raise SystemExit(f"bench: redis-server found no free port in "
                                     f"{PORT_ATTEMPTS} tries; see {self.log_path}") from None
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it lingers; its temp dir goes too (the log stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _launch(self, port: int) -> None:
        self.port = port
        self.log_path = os.path.join(self.out_dir, f"bench-redis-{port}.log")
        cmd = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", self.dir,
               "--daemonize", "no", "--save", "", "--appendonly", "no", "--logfile", "",
               "--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        probe = redis.Redis(host=HOST, port=port, socket_timeout=0.25,
                            socket_connect_timeout=0.25, retry=_no_retry())
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while not _answers_as(probe, self.proc.pid):
                if self.proc.poll() is not None:
                    text = _tail(self.log_path)
                    if "Address already in use" in text:
                        raise PortTaken(port)
                    raise SystemExit(f"bench: redis-server exited "
                                     f"{self.proc.returncode} at start:\n{text}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"bench: redis-server did not answer in "
                                     f"{START_TIMEOUT:g} s; see {self.log_path}")
                time.sleep(0.01)
        finally:
            probe.close()


def memory(url: str, pid: int | None = None) -> dict:
    """What a Redis holds now: ``INFO memory``'s figures, and with ``pid`` its RSS by psutil.

    ``used_memory`` is what Redis's allocator handed out (keys, channels, client
    buffers): the figure to divide by the ids subscribed. The RSS is what the machine
    pays, allocator overhead included; without a pid (a Redis bench did not start, maybe
    on another host) it is Redis's own ``used_memory_rss``. A Redis that does not
    answer gives ``error`` instead, so a run still ends with its other figures.
    """
    out: dict = {"pid": pid, "used_memory": None, "used_memory_rss": None,
                 "rss_bytes": None, "rss_from": None}
    client = redis.Redis.from_url(url, socket_timeout=INFO_TIMEOUT,
                                  socket_connect_timeout=INFO_TIMEOUT, retry=_no_retry())
    try:
        info = client.info("memory")
        out["used_memory"] = info["used_memory"]
        out["used_memory_rss"] = info["used_memory_rss"]
        out["rss_bytes"], out["rss_from"] = info["used_memory_rss"], "INFO used_memory_rss"
    except redis.RedisError as exc:
        out["error"] = str(exc)
    finally:
        client.close()
    if pid is not None:
        try:
            out["rss_bytes"], out["rss_from"] = psutil.Process(pid).memory_info().rss, "psutil"
        except psutil.Error as exc:
            out["error"] = out.get("error") or f"pid {pid}: {exc}"
    return out


def figures(url: str, pid: int | None, before: dict, after: dict, held: dict) -> dict:
    """What the server's Redis grew by, per connection and per subscribed id.

    ``before`` and ``after`` are :func:`flood.measure.snapshot`'s readings (the server's
    memory and /stats, and this Redis's :func:`memory`), ``held`` the flood's counts.

    Every process subscribes each id it holds, so the ids Redis keeps a channel for are
    /stats' ``ids`` (summed over the workers, an id once per worker holding it). Its RSS
    growth joins the server's PSS growth in ``server_redis_kb_per_conn``: the userland
    memory a connection costs, the broker included.
    """
    n = held["active"] or 1
    rb, ra = before["redis"], after["redis"]
    ids = _grown(_whole(after["server_stats"]), _whole(before["server_stats"]), "ids")
    used = _grown(ra, rb, "used_memory")
    rss = _grown(ra, rb, "rss_bytes")
    pss = _grown(after["server"], before["server"], "pss_bytes")
    return {
        "redis_url": redacted(url), "redis_pid": pid,
        "redis_started": pid is not None, "redis_rss_from": ra["rss_from"],
        "redis_rss_before": rb["rss_bytes"], "redis_rss_after": ra["rss_bytes"],
        "redis_kb_per_conn": rss / n / 1024 if rss is not None else None,
        "redis_used_memory_before": rb["used_memory"], "redis_used_memory_after": ra["used_memory"],
        "redis_ids": ids,
        "redis_bytes_per_id": used / ids if used is not None and ids else None,
        "server_redis_kb_per_conn": ((pss + rss) / n / 1024
                                     if pss is not None and rss is not None else None),
        "redis_errors": [e for e in (rb.get("error"), ra.get("error")) if e],
    }


def _whole(stats: dict | None) -> dict | None:
    """/stats if its sums cover every worker; None if one did not answer (its ids are
    missing from the sum, which would overstate the bytes per id)."""
    if stats and any("error" in w for w in stats.get("workers") or []):
        return None
    return stats


def _grown(after: dict | None, before: dict | None, key: str) -> int | None:
    """``after[key] - before[key]``, or None when either reading lacks it."""
    if not after or not before or after.get(key) is None or before.get(key) is None:
        return None
    return after[key] - before[key]


def redacted(url: str) -> str:
    """``url`` fit for the JSON and the table: a password in it replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name, colon, _ = user.partition(":")
    return urlunsplit(parts._replace(netloc=f"{name}{':***' if colon else ''}@{host}"))


def _answers_as(probe: redis.Redis, pid: int) -> bool:
    """Whether our process answers: the port may have gone to another process between
    picking and binding, and that one may answer too."""
    try:
        return probe.info("server")["process_id"] == pid
    except redis.RedisError:  # refused, timed out, loading, someone else's
        return False


def _no_retry() -> Retry:
    """None: redis-py's default retries with a growing backoff would turn a stalled
    Redis's timeout into tens of seconds, and a probe's refusal into a wait."""
    return Retry(NoBackoff(), 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: str, most: int = 2000) -> str:
    with open(path, "rb") as fh:
        return fh.read()[-most:].decode(errors="replace")

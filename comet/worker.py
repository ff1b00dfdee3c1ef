"""One worker of ``--workers N``: its own listener on the shared port, and the whole ``/stats``.

The master (:mod:`comet.master`) forks a worker after importing everything
and calls :func:`run` in the child. The worker serves as the single process
does (:mod:`comet.server`'s pieces), with three differences:

* its listener is one of N on the port (SO_REUSEPORT); the kernel spreads
  new connections among them;
* it says "ready" on a pipe from the master once it accepts, so the master
  knows when a rolling restart may stop the worker it replaces;
* it answers its siblings on a private unix socket in the master's run
  directory (``w<index>-<pid>.sock``) with its own ``/stats`` snapshot, and
  answers a client's ``GET /stats`` for the whole server: the sum, and each
  worker's own (:class:`Siblings`).

It must never return into the master's code: :func:`run` returns an exit
status that the master's fork branch passes to ``os._exit``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import tracemalloc
from pathlib import Path

import gevent
import gevent.pool
import psutil
from gevent import socket
from gevent.server import StreamServer

from comet import config, server
from comet.app import CometApp
from comet.broker import BrokerUnavailable
from comet.hub import Hub
from comet.stats import pss, summed

log = logging.getLogger("comet.worker")

#: seconds a sibling has to send its snapshot before /stats reports it as not answering
SIBLING_TIMEOUT = 1.0
#: bytes of a sibling's snapshot read at most (a snapshot is about 1 KB)
SNAPSHOT_MOST = 1 << 20
#: seconds between checks that the master is still this worker's parent
ORPHAN_CHECK = 1.0


class Siblings:
    """This worker's part in the whole server's ``/stats``, over the run directory.

    Every worker listens on ``<run dir>/w<index>-<pid>.sock`` and gives its
    snapshot to whoever connects; the worker a client asks reads every
    other socket there, each in its own greenlet, so a sibling that is stuck
    costs the request :data:`SIBLING_TIMEOUT` and an entry saying so, never
    the event loop. The directory is the list of workers: a worker's file
    goes when it exits, and the master removes the file of one that died.
    """

    def __init__(self, rundir: str, index: int, hub: Hub, master_pid: int,
                 master_started: float) -> None:
        self.rundir = Path(rundir)
        self.index = index
        self.hub = hub
        self.master = psutil.Process(master_pid)
        self.master_started = master_started
        self.path = self.rundir / socket_name(index, os.getpid())
        self._process = psutil.Process()

    def own(self) -> dict:
        """This worker's snapshot as a ``workers`` entry: which one, and its PSS."""
        return {"index": self.index, **self.hub.snapshot(), "accepting": self.hub.accepting,
                "pss_bytes": pss(self._process)}

    def stats(self) -> dict:
        """``GET /stats`` of the whole server: the sums, the master, and every worker."""
        others = [path for path in self.rundir.glob("w*.sock") if path != self.path]
        fetches = [gevent.spawn(fetch, path) for path in others]
        gevent.joinall(fetches)
        workers = sorted([self.own(), *(f.value for f in fetches)],
                         key=lambda w: (w["index"], w["pid"]))
        answering = [w for w in workers if "error" not in w]
        return {"pid": self.master.pid,
                "uptime": round(time.time() - self.master_started, 3),
                **summed(answering),
                "master": {"pid": self.master.pid, "rss_bytes": _rss(self.master),
                           "pss_bytes": pss(self.master)},
                "workers": workers}

    def listen(self) -> StreamServer:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        return StreamServer(listener, self._answer, spawn=gevent.pool.Pool(16))

    def _answer(self, sock: socket.socket, _address) -> None:
        sock.settimeout(SIBLING_TIMEOUT)
        sock.sendall(json.dumps(self.own()).encode())

    def close(self, stats_server: StreamServer) -> None:
        stats_server.close()
        self.path.unlink(missing_ok=True)


def socket_name(index: int, pid: int) -> str:
    """The file name of worker ``index``'s stats socket; the master removes a dead one's."""
    return f"w{index}-{pid}.sock"


def fetch(path: Path) -> dict:
    """A sibling's snapshot, or an entry naming it and why it gave none."""
    index, _, pid = path.stem[1:].partition("-")
    try:
        with gevent.Timeout(SIBLING_TIMEOUT), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if sum(map(len, chunks)) > SNAPSHOT_MOST:
                    raise ValueError("snapshot too large")
        return json.loads(b"".join(chunks))
    except gevent.Timeout:
        error = f"no answer within {SIBLING_TIMEOUT:g} s"
    except (OSError, ValueError) as exc:
        error = f"no answer: {exc}"
    return {"index": int(index), "pid": int(pid), "error": error}


def _rss(process: psutil.Process) -> int | None:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return None


def _stop_when_orphaned(master_pid: int, stopping) -> None:
    """A master killed outright (SIGKILL) sends no SIGTERM: drain when it is gone.

    Orphaned, a worker would hold the port for ever with no one to restart
    or stop it; its parent changing is the sign (gunicorn's workers check the same).
    """
    while os.getppid() == master_pid:
        gevent.sleep(ORPHAN_CHECK)
    log.warning("master (pid %d) is gone: stopping", master_pid)
    stopping.set()


def run(settings: config.Settings, index: int, port: int, ready_fd: int, rundir: str,
        master_started: float) -> int:
    """Serve as worker ``index`` until SIGTERM or SIGINT; the exit status.

    Called in the child right after the fork: gevent's loop is made this
    process's own first (``gevent.reinit``: gevent's fork rule; a no-op when
    the master never started a loop, as today, and what keeps the loop's
    kernel state apart if it ever does).
    """
    gevent.reinit()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master's to act on (a rolling restart)
    if settings.tracemalloc:
        tracemalloc.start(settings.tracemalloc)
    try:
        app = CometApp(settings)
    except BrokerUnavailable as exc:
        log.error("worker %d: %s", index, exc)
        return 1
    hub = app.hub
    siblings = Siblings(rundir, index, hub, os.getppid(), master_started)
    app.stats = siblings.stats
    try:
        listener = server.listen(settings.host, port, server.backlog(settings), reuse_port=True)
    except OSError as exc:
        log.error("worker %d cannot listen on %s:%d: %s", index, settings.host, port, exc)
        return 1
    http = server.make_server(settings, app, listener)
    stats_server = siblings.listen()
    http.start()
    stats_server.start()
    hub.counters.reset_baseline()
    stopping = server.stop_signals()
    gevent.spawn(_stop_when_orphaned, os.getppid(), stopping)
    log.info("worker %d (pid %d) accepting on %s:%d", index, os.getpid(), settings.host, port)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    stopping.wait()
    taken = server.take_waiting(http)
    if taken:
        log.info("worker %d took %d queued connections before closing", index, taken)
    server.drain(settings, app, http)
    siblings.close(stats_server)
    if os.getppid() != siblings.master.pid:
        _remove_if_empty(rundir)
    return 0


def _remove_if_empty(rundir: str) -> None:
    """An orphan's last act: the master that would remove the run directory is gone,
    so the last worker out does (a sibling still there keeps it, and removes it later)."""
    try:
        os.rmdir(rundir)
    except OSError:
        pass

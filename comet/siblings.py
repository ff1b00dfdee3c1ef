"""The whole server's ``/stats`` when several workers serve one port: :class:`Siblings`.

Each worker of a master, comet's own (:mod:`comet.master`) or gunicorn's
(:mod:`comet.gunicorn`), serves its own snapshot on a unix socket in the
master's run directory (:mod:`comet.rundir`), and answers a client's
``GET /stats`` (and so ``/metrics`` and ``/dashboard/events``, which read
the same callable) by asking every other socket there and adding the
answers up with :func:`comet.stats.summed`. The two masters differ only in
what they hand over: the directory, this worker's index, the master's pid
and when it started.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gevent
import gevent.pool
import psutil
from gevent import socket
from gevent.server import StreamServer

from comet.hub import Hub
from comet.rundir import socket_name
from comet.stats import pss, summed

#: seconds a sibling has to send its snapshot before /stats reports it as not answering
SIBLING_TIMEOUT = 1.0
#: bytes of a sibling's snapshot read at most (a snapshot is about 1 KB)
SNAPSHOT_MOST = 1 << 20


class Siblings:
    """This worker's part in the whole server's ``/stats``, over the run directory.

    Every worker listens on ``<run dir>/w<index>-<pid>.sock`` and gives its
    snapshot to whoever connects; the worker a client asks reads every
    other socket there, each in its own greenlet, so a sibling that is stuck
    costs the request :data:`SIBLING_TIMEOUT` and an entry saying so, never
    the event loop. The directory is the list of workers: a worker's file
    goes when it exits, its master removes the file of one that died, and a
    file nobody listens on any more (a worker killed, its master not told
    yet, or a master that never cleans up) is removed by the first reader.
    """

    def __init__(self, rundir: str | Path, index: int, hub: Hub, master_pid: int,
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
        found = [f.value for f in fetches if f.value is not None]
        workers = sorted([self.own(), *found], key=lambda w: (w["index"], w["pid"]))
        answering = [w for w in workers if "error" not in w]
        return {"pid": self.master.pid,
                "uptime": round(time.time() - self.master_started, 3),
                "answered_by": os.getpid(),
                **summed(answering),
                "master": {"pid": self.master.pid, "rss_bytes": _rss(self.master),
                           "pss_bytes": pss(self.master)},
                "workers": workers}

    def listen(self) -> StreamServer:
        """The socket siblings ask, listening before its name appears in the directory.

        Bound under a hidden name and renamed once listening: a reader that
        finds a ``w*.sock`` nobody listens on may then take it for a dead
        worker's and remove it, never a starting worker's.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        making = self.path.with_name(f".{self.path.name}.new")
        making.unlink(missing_ok=True)
        listener.bind(str(making))
        listener.listen(64)
        os.rename(making, self.path)
        return StreamServer(listener, self._answer, spawn=gevent.pool.Pool(16))

    def _answer(self, sock: socket.socket, _address) -> None:
        sock.settimeout(SIBLING_TIMEOUT)
        sock.sendall(json.dumps(self.own()).encode())

    def close(self, stats_server: StreamServer) -> None:
        stats_server.close()
        self.path.unlink(missing_ok=True)


def fetch(path: Path) -> dict | None:
    """A sibling's snapshot, an entry naming it and why it gave none, or None if it is gone.

    Gone: no such file, or nobody listening on it (a worker that died); its
    file is removed, and its successor, if any, answers under its own pid.
    """
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
    except (FileNotFoundError, ConnectionRefusedError):
        path.unlink(missing_ok=True)
        return None
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

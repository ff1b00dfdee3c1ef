"""The master of ``python -m comet.server --workers N``: fork after import, restart, roll.

Theory of operation. The master imports everything (comet.server brings the
app, the hub, the broker, gevent), reserves the port, then forks N workers
(:mod:`comet.worker`): the pages of the imported code are shared
copy-on-write. Each worker binds its own listener to the same host:port
with SO_REUSEPORT and the kernel spreads connections among them. The master
runs no gevent loop and serves nothing: it is one plain loop over
``select`` that wakes for three things only,

* a signal (``signal.set_wakeup_fd`` writes its number on a pipe):
  SIGTERM/SIGINT stop, SIGHUP rolls, SIGCHLD reaps;
* a worker's "ready" on the pipe it inherited (it is accepting);
* a deadline: a restart due after its backoff, a worker slow to get ready,
  a stopping worker past ``--shutdown-timeout``.

The port. ``--port 0`` must mean one port for all: the master binds a
socket with SO_REUSEPORT to host:port and never calls listen(), so the port
is held (and learnt) but no connection ever waits on this socket; the
workers bind and listen on the port it got.

A worker that dies is started again at its index after a backoff
(:class:`Backoff`). One that dies before it ever got ready while the server
starts means the server cannot start (a port taken, a bad setting): the
master stops the others and exits 1. docs/design.rst, "Workers", has the
picture; docs/usage.rst the signals.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from comet import config, server
from comet.rundir import forget_worker
from comet.worker import run as serve_as_worker

log = logging.getLogger("comet.master")

#: seconds a worker has to say "ready" before it is killed (and the start, or the roll,
#: fails), on top of --redis-wait (a worker waiting for Redis is not stuck)
READY_TIMEOUT = 30.0
#: seconds past --shutdown-timeout a stopping worker has to exit before SIGKILL
STOP_MARGIN = 3.0
#: the signals the master acts on; blocked across fork() so none reaches a child half-made
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def spans_processes(settings: config.Settings) -> bool:
    """Whether this server's broker delivers across processes: the one place to ask.

    Every worker has its own router; a message published to one worker
    reaches another's clients only through a broker that spans processes.
    Today that is the Redis broker, chosen by a ``redis`` setting. Whoever
    adds another such broker changes this function, and nothing else.
    """
    return bool(getattr(settings, "redis", None))


class Backoff:
    """How long to wait before starting a dead worker again: 0.1 s doubling to 10 s.

    A worker that crashes at once would otherwise be forked in a tight
    loop; one that lived ``healthy`` seconds died of something else than
    its start, and its successor starts at once (the schedule resets).
    """

    def __init__(self, first: float = 0.1, most: float = 10.0, healthy: float = 30.0) -> None:
        self.first, self.most, self.healthy = first, most, healthy
        self._next = first

    def delay(self, lived: float) -> float:
        """Seconds to wait before the next start, for a worker that lived ``lived`` s."""
        if lived >= self.healthy:
            self._next = self.first
        delay = self._next
        self._next = min(self.most, delay * 2)
        return delay


def death(status: int) -> str:
    """A wait status in words: ``exit status 1``, ``killed by SIGKILL``."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


@dataclass(eq=False)
class Worker:
    """One forked worker, as the master sees it."""

    index: int
    pid: int
    #: the read end of its "ready" pipe, None once read or closed
    ready_fd: int | None
    #: monotonic time of its fork
    started: float
    ready: bool = False
    #: monotonic time after which it is SIGKILLed (set once it has been told to stop)
    kill_at: float | None = None

    def __str__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


def preload(settings: config.Settings) -> None:
    """Import now what every worker would import on first use: shared, not N copies.

    The Redis broker's module (and redis-py) is imported where it is used
    (``hub.broker_for``), so a single process without Redis never loads it.
    """
    if settings.redis:
        importlib.import_module("comet.broker.rediscluster" if settings.redis_cluster
                                else "comet.broker.redis")


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port with SO_REUSEPORT and no listen(): the port, held, in no accept group."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run(settings: config.Settings) -> int:
    """``--workers N`` (N > 1): the master's life; its exit status."""
    if not spans_processes(settings):
        log.error("--workers %d needs a broker that spans processes (--redis): each worker "
                  "has its own router, so a message published to one worker would never "
                  "reach the clients of another; run one worker, or give --redis",
                  settings.workers)
        return 2
    preload(settings)
    server.announce_limits(settings)
    try:
        reserved = reserve_port(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    rundir = tempfile.mkdtemp(prefix="comet-")
    log.info("run directory %s (the workers' stats sockets)", rundir)
    try:
        return Master(settings, reserved, rundir).run()
    finally:
        reserved.close()
        shutil.rmtree(rundir, ignore_errors=True)


class Master:
    """The loop: start the workers, then answer signals, readiness and deadlines."""

    def __init__(self, settings: config.Settings, reserved: socket.socket, rundir: str) -> None:
        self.settings = settings
        self.reserved = reserved
        self.host, self.port = reserved.getsockname()[:2]
        self.rundir = rundir
        self.started = time.time()
        self.ready_timeout = READY_TIMEOUT + settings.redis_wait
        #: the worker serving each index
        self.workers: dict[int, Worker] = {}
        #: a rolling restart's new worker, not ready yet; its index's old one still serves
        self.incoming: Worker | None = None
        #: indexes the rolling restart has still to replace
        self.roll: list[int] = []
        #: workers told to stop (replaced, or the master is stopping), by pid
        self.leaving: dict[int, Worker] = {}
        #: index -> monotonic time its dead worker's successor is due
        self.restarts: dict[int, float] = {}
        self.backoffs = {index: Backoff() for index in range(settings.workers)}
        self.announced = False
        self.stopping = False
        self.status = 0
        self._wake_r, self._wake_w = os.pipe()
        self._saved_handlers: dict[int, object] = {}

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            for index in range(self.settings.workers):
                self.workers[index] = self._fork(index)
            while not (self.stopping and not self._children()):
                self._wait()
                self._reap()
                self._on_deadlines()
                self._announce()
        finally:
            self._restore_signals()
            os.close(self._wake_r)
            os.close(self._wake_w)
        log.info("master stopped (exit status %d)", self.status)
        return self.status

    def _children(self) -> list[Worker]:
        found = [*self.workers.values(), *self.leaving.values()]
        return found + [self.incoming] if self.incoming else found

    def _wait(self) -> None:
        """Sleep until a signal, a worker's "ready", or the next deadline."""
        pending = {w.ready_fd: w for w in self._children() if w.ready_fd is not None}
        readable, _, _ = select.select([self._wake_r, *pending], [], [], self._timeout())
        for fd in readable:
            if fd == self._wake_r:
                for signum in os.read(self._wake_r, 64):
                    self._on_signal(signum)
            else:
                self._on_ready(pending[fd])

    def _timeout(self) -> float | None:
        due = [*self.restarts.values(),
               *(w.kill_at for w in self._children() if w.kill_at is not None),
               *(w.started + self.ready_timeout for w in self._children()
                 if w.ready_fd is not None)]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_ready(self, worker: Worker) -> None:
        said = os.read(worker.ready_fd, 64)
        os.close(worker.ready_fd)
        worker.ready_fd = None
        worker.ready = said.startswith(b"ready")

    def _announce(self) -> None:
        """Once every first worker accepts: the line the operator (and tests) wait for."""
        if self.announced or self.stopping:
            return
        workers = self.workers.values()
        if len(workers) == self.settings.workers and all(w.ready for w in workers):
            self.announced = True
            log.info("serving on http://%s:%d/ (pid %d, %d workers)", self.host, self.port,
                     os.getpid(), len(self.workers))

    # -- signals --------------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in HANDLED:
            # The handler does nothing: the wakeup pipe carries the signal's number.
            self._saved_handlers[signum] = signal.signal(signum, lambda *_: None)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                log.info("%s: stopping %d workers", signal.Signals(signum).name,
                         len(self._children()))
                self._stop_all()
        elif signum == signal.SIGHUP:
            if self.stopping:
                return
            log.info("SIGHUP: rolling restart of %d workers, one at a time",
                     self.settings.workers)
            self.roll = sorted(self.workers)
        # SIGCHLD: the loop reaps after every wake

    def _stop_all(self) -> None:
        self.stopping = True
        self.restarts.clear()
        self.roll.clear()
        for w in [*self.workers.values(), *([self.incoming] if self.incoming else [])]:
            self._tell_to_stop(w)
        self.workers.clear()
        self.incoming = None

    def _tell_to_stop(self, worker: Worker) -> None:
        """SIGTERM: it stops accepting and ends its streams; SIGKILL if it outstays."""
        self.leaving[worker.pid] = worker
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + self._stop_allowance()
        _send(worker.pid, signal.SIGTERM)

    def _stop_allowance(self) -> float:
        """Seconds a worker told to stop has: its drain, its streams' last writes, a margin."""
        settings = self.settings
        return settings.drain_seconds + settings.shutdown_timeout + STOP_MARGIN

    # -- deaths ---------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        worker = self._find(pid)
        if worker is None:
            return
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        forget_worker(Path(self.rundir), worker.index, worker.pid)
        if self.leaving.pop(pid, None) is not None:
            log.info("%s stopped: %s", worker, death(status))
        elif worker is self.incoming:
            self.incoming = None
            self.roll.clear()
            log.error("%s died before it was ready: %s; rolling restart abandoned",
                      worker, death(status))
            if worker.index not in self.workers:  # the one it was to replace died meanwhile
                self._restart_later(worker, status)
        elif not self.announced and not worker.ready:
            log.error("%s failed to start: %s; stopping", worker, death(status))
            del self.workers[worker.index]
            self.status = 1
            self._stop_all()
        else:
            self._restart_later(worker, status)

    def _restart_later(self, worker: Worker, status: int) -> None:
        self.workers.pop(worker.index, None)
        lived = time.monotonic() - worker.started
        if self.incoming is not None and self.incoming.index == worker.index:
            log.warning("%s died (%s) after %.1f s; its replacement is on its way",
                        worker, death(status), lived)
            return
        delay = self.backoffs[worker.index].delay(lived)
        log.warning("%s died: %s after %.1f s; restarting it in %.1f s",
                    worker, death(status), lived, delay)
        self.restarts[worker.index] = time.monotonic() + delay

    def _find(self, pid: int) -> Worker | None:
        for w in self._children():
            if w.pid == pid:
                return w
        return None

    # -- deadlines and the roll -------------------------------------------------------

    def _on_deadlines(self) -> None:
        now = time.monotonic()
        for index, due in list(self.restarts.items()):
            if due <= now:
                del self.restarts[index]
                self.workers[index] = self._fork(index, " (restart)")
        for w in self._children():
            if w.kill_at is not None and w.kill_at <= now:
                log.warning("%s did not stop within %g s: SIGKILL", w, self._stop_allowance())
                w.kill_at = None
                _send(w.pid, signal.SIGKILL)
            elif w.ready_fd is not None and w.started + self.ready_timeout <= now:
                log.error("%s not ready within %g s: SIGKILL", w, self.ready_timeout)
                os.close(w.ready_fd)
                w.ready_fd = None
                _send(w.pid, signal.SIGKILL)
        self._step_roll()

    def _step_roll(self) -> None:
        """One index at a time: its new worker ready, then its old one told to stop and
        waited for (it drains over --drain-seconds), then the next index."""
        if self.stopping:
            return
        new = self.incoming
        if new is not None and new.ready:
            self.incoming = None
            old = self.workers.get(new.index)
            self.workers[new.index] = new
            if old is not None:
                log.info("worker %d replaced: pid %d is accepting, pid %d stops",
                         new.index, new.pid, old.pid)
                self._tell_to_stop(old)
            if not self.roll:
                log.info("rolling restart done")
        # The next index only once the one replaced has drained and gone: one worker's
        # clients come back to the others at a time, never two workers' at once.
        while self.incoming is None and self.roll and not self.leaving:
            index = self.roll.pop(0)
            if index in self.workers:  # not one waiting for its restart: that one will be new
                self.incoming = self._fork(index, " (rolling restart)")

    # -- fork -----------------------------------------------------------------------

    def _fork(self, index: int, why: str = "") -> Worker:
        ready_r, ready_w = os.pipe()
        # Everything the master holds now goes to the collector's permanent generation:
        # a worker's collections then never write to those objects' headers, which
        # would copy the pages they share with the master (and each other) one by one.
        gc.freeze()
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(self._be_worker(index, ready_r, ready_w))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        os.close(ready_w)
        log.info("started worker %d: pid %d%s", index, pid, why)
        return Worker(index, pid, ready_r, time.monotonic())

    def _be_worker(self, index: int, ready_r: int, ready_w: int) -> int:
        """In the child: shed the master's signals and descriptors, then serve."""
        try:
            signal.set_wakeup_fd(-1)
            for signum, handler in self._saved_handlers.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            for fd in [ready_r, self._wake_r, self._wake_w,
                       *(w.ready_fd for w in self._children() if w.ready_fd is not None)]:
                os.close(fd)
            self.reserved.close()
            return serve_as_worker(self.settings, index, self.port, ready_w, self.rundir,
                                   self.started)
        except BaseException:
            log.exception("worker %d failed", index)
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone: the reaper hears of it

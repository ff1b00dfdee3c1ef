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
  worker's own (:class:`comet.siblings.Siblings`, which gunicorn's workers
  use too).

It must never return into the master's code: :func:`run` returns an exit
status that the master's fork branch passes to ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import signal
import tracemalloc
from pathlib import Path

import gevent

from comet import config, server
from comet.app import CometApp
from comet.broker import BrokerUnavailable
from comet.rundir import remove_if_empty
from comet.siblings import Siblings

log = logging.getLogger("comet.worker")

#: seconds between checks that the master is still this worker's parent
ORPHAN_CHECK = 1.0


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
        # An orphan's last act: the master that would remove the directory is gone.
        remove_if_empty(Path(rundir))
    return 0

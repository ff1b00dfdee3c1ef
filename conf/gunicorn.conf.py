"""gunicorn settings for comet: ``gunicorn -c conf/gunicorn.conf.py comet.wsgi:application``.

Each value says why; ``python -m comet.tune`` checks the host limits these rely on.
"""

import math
import os

# Not ``from comet import config``: gunicorn reads every module-level name that is one of
# its settings, and ``config`` is one (the -c path): it would stop with "Not a string".
from comet import rundir
from comet.config import Settings, from_environment

_settings = Settings(**from_environment())

#: comet's worker: gevent, with hibernating connections (no greenlet while idle) and
#: WebSocket. The stock "gevent" worker also runs the app, one greenlet per connection.
worker_class = "comet.gunicorn.Worker"

#: One process by default: the in-process broker only reaches connections of its own process,
#: so comet.wsgi refuses a second worker of the same master (however -w was given) with the
#: reason. With COMET_REDIS set, -w N runs N workers that deliver to each other's clients.
workers = 1

#: Greenlets per worker: with comet's worker a hibernated connection holds none, so this
#: bounds requests in progress; COMET_MAX_CONNECTIONS bounds connections held (the open-files
#: limit, 20,000 per process here, less comet.hostlimits.SERVER_FD_MARGIN, 1,000).
worker_connections = int(os.environ.get("COMET_WORKER_CONNECTIONS", "19000"))

#: Same port as ``python -m comet.server``; conf/sysctl.conf reserves it from the ephemeral range.
bind = os.environ.get("COMET_BIND", "0.0.0.0:8000")

#: Listen backlog; the kernel caps it at net.core.somaxconn (8192 in conf/sysctl.conf).
backlog = 8192

#: Seconds without a heartbeat from a worker before the arbiter restarts it. The gevent worker
#: beats from its own greenlet, so long-lived streams do not trip it; a blocked loop does.
timeout = 30

#: Seconds a stopping worker has before gunicorn kills it: comet's drain spreads the ends of its
#: connections over COMET_DRAIN_SECONDS (10), then their last writes get COMET_SHUTDOWN_TIMEOUT (5).
#: gunicorn takes whole seconds only.
graceful_timeout = math.ceil(_settings.drain_seconds + _settings.shutdown_timeout)

#: Keep-alive between requests on non-streaming connections (publish, stats).
keepalive = 5


def child_exit(server, worker):
    """A worker is gone (stopped, or killed): its stats socket goes with it, so that
    ``/stats`` lists its successor alone (comet.rundir, comet.siblings)."""
    rundir.forget_worker(rundir.for_gunicorn_master(server.pid), worker.age, worker.pid)


def on_exit(server):
    """The master stops: the run directory its workers shared for ``/stats`` goes."""
    rundir.remove(rundir.for_gunicorn_master(server.pid))

"""``comet.wsgi:application`` for gunicorn: the same app, settings from ``COMET_*``.

    gunicorn -k gevent -w 1 --worker-connections 19000 comet.wsgi:application

One worker only, for now: each worker has its own in-process router, so a
message published to one worker would never reach a client held by another.
Several workers need the Redis backplane (not built yet). A second worker of
the same gunicorn master is detected with an exclusive lock keyed by the
master's pid and refused at import, which makes gunicorn stop with
"Worker failed to boot" and our message in its log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile

from comet import config
from comet.app import CometApp

log = logging.getLogger("comet.wsgi")


class SecondWorkerRefused(RuntimeError):
    pass


def _claim_only_worker() -> int:
    """Hold a lock that only one worker of this master can hold; returns its fd."""
    path = os.path.join(tempfile.gettempdir(), f"comet-gunicorn-{os.getppid()}.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SecondWorkerRefused(
            "comet runs with one gunicorn worker (-w 1) until the Redis backplane exists: "
            "each worker has its own router, so messages would not reach clients held by "
            "other workers") from None
    return fd


def _make_application() -> CometApp:
    settings = config.Settings(**config.from_environment())
    config.configure_logging(settings.log_level)
    return CometApp(settings)


_worker_lock = _claim_only_worker()
application = _make_application()

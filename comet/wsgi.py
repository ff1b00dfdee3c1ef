"""``comet.wsgi:application`` for gunicorn: the same app, settings from ``COMET_*``.

    gunicorn -k gevent -w 1 --worker-connections 19000 comet.wsgi:application
    COMET_REDIS=redis://localhost:6379/0 gunicorn -c conf/gunicorn.conf.py -w 4 \
        comet.wsgi:application

Several workers need a broker that spans processes (``COMET_REDIS``): with
the in-process one each worker would have its own router, and a message
published to one worker would never reach a client held by another. Without
Redis, a second worker of the same gunicorn master is detected with an
exclusive lock keyed by the master's pid and refused at import, which makes
gunicorn stop with "Worker failed to boot" and our message in its log. The
guard holds however the worker count was given (``-w``,
``conf/gunicorn.conf.py``, ``GUNICORN_CMD_ARGS``), which a check of the
configuration file alone would not.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile

import gevent

from comet import config, publishers, tokens
from comet.app import CometApp
from comet.master import spans_processes
from comet.server import announce_publishing, announce_subscribing

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
            "comet runs with one gunicorn worker (-w 1) unless COMET_REDIS names a Redis: "
            "without it each worker has its own router, so messages would not reach clients "
            "held by other workers") from None
    return fd


def _make_application(settings: config.Settings) -> CometApp:
    config.configure_logging(settings.log_level, settings.log_format)
    if announce_subscribing(settings) is not None:  # said in the log; gunicorn stops
        raise tokens.TokenSettingsError("unusable token settings (the line above says why)")
    if announce_publishing(settings) is not None:
        raise publishers.PublisherSettingsError("unusable publisher keys (the line above says why)")
    return CometApp(settings)


def _end_streams_when_gunicorn_stops(app: CometApp) -> None:
    """Chain the worker's stop signals so streams end cleanly (farewell, last chunk).

    gunicorn installs its handlers before it imports the app; without this its
    graceful stop would wait --graceful-timeout for streams that never end and
    then cut them. The chained handler only schedules ``app.shutdown`` (in a
    greenlet of its own, since it sleeps while it spreads the ends) on the
    event loop (no greenlet work inside a signal handler) and calls gunicorn's.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)
        owner = getattr(previous, "__self__", None)
        if not any(c.__module__.startswith("gunicorn.") for c in type(owner).__mro__):
            continue  # not a gunicorn worker's handler

        def chained(sig, frame, previous=previous):  # shutdown sleeps while it drains
            gevent.get_hub().loop.run_callback_threadsafe(gevent.spawn, app.shutdown)
            previous(sig, frame)

        signal.signal(signum, chained)


_settings = config.Settings(**config.from_environment())
_worker_lock = None if spans_processes(_settings) else _claim_only_worker()
application = _make_application(_settings)
_end_streams_when_gunicorn_stops(application)

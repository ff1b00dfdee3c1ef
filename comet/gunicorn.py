"""``comet.gunicorn.Worker``: gunicorn's pywsgi gevent worker with comet's request handler.

    gunicorn -k comet.gunicorn.Worker -w 1 comet.wsgi:application

With it, gunicorn serves exactly what ``python -m comet.server`` serves:
hibernating streams (``COMET_HIBERNATE``, default on), WebSocket on ``/ws/``
(gevent-websocket's handshake), bounded request reads, a 4xx before any bad
WebSocket upgrade, and ``/stats``, ``/metrics`` and ``/dashboard/events``
for the whole server, summed over every worker of the gunicorn master as
comet's own master sums its workers (:class:`comet.siblings.Siblings`, over
a run directory named from the master's pid: :mod:`comet.rundir`). Settings
come from the ``COMET_*`` variables, as for ``comet.wsgi``.

What the stock workers give instead: ``-k gevent`` and ``-k gevent_pywsgi``
iterate the stream (one parked greenlet per connection, as ``--hibernate
off``), answer ``/ws/`` with 426 and ``/stats`` for their own process only;
gevent-websocket's ``GeventWebSocketWorker`` adds WebSocket but still parks a
greenlet per stream. Note that ``--worker-connections`` bounds greenlets, so
it no longer bounds hibernated streams: ``COMET_MAX_CONNECTIONS`` does.
"""

from __future__ import annotations

import psutil
from gevent.server import StreamServer
from gunicorn.arbiter import Arbiter
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from comet import config, rundir
from comet.app import CometApp
from comet.server import CometHandler
from comet.siblings import Siblings


class Server(PyWSGIServer):
    """gunicorn's pywsgi server, asking the app before any WebSocket upgrade."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pre_start_hook = getattr(self.application, "refuses_websocket", None)


class Worker(GeventPyWSGIWorker):
    server_class = Server
    #: this worker's part in the whole server's /stats, once the app is loaded
    siblings: Siblings | None = None
    #: where its siblings ask for its snapshot
    stats_server: StreamServer | None = None

    def init_process(self) -> None:
        settings = config.Settings(**config.from_environment())
        self.wsgi_handler = type("Handler", (CometHandler, PyWSGIHandler), {
            "read_timeout": settings.read_timeout, "hibernate": settings.hibernate})
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, then make its ``stats`` the whole server's.

        gunicorn numbers its workers by ``age`` (1, 2, ...; a restarted one
        takes the next): that is the index in ``/stats``. Called after
        gevent's patching and ``hub.reinit``, so the stats socket's server
        runs on this worker's loop.
        """
        super().load_wsgi()
        if not isinstance(self.wsgi, CometApp):
            return
        master_started = psutil.Process(self.ppid).create_time()
        for last_try in (False, True):
            try:
                where = rundir.make_private(rundir.for_gunicorn_master(self.ppid))
                self.siblings = Siblings(where, self.age, self.wsgi.hub, self.ppid,
                                         master_started)
                self.stats_server = self.siblings.listen()
                break
            except rundir.UnsafeRunDirectory as exc:
                self.log.error("comet worker (pid %d): %s", self.pid, exc)
                raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
            except FileNotFoundError:  # the last sibling out took the directory just now
                if last_try:
                    raise
        self.wsgi.stats = self.siblings.stats
        self.stats_server.start()

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.siblings is not None:
                self.siblings.close(self.stats_server)
                rundir.remove_if_empty(self.siblings.rundir)

"""``comet.gunicorn.Worker``: gunicorn's pywsgi gevent worker with comet's request handler.

    gunicorn -k comet.gunicorn.Worker -w 1 comet.wsgi:application

With it, gunicorn serves exactly what ``python -m comet.server`` serves:
hibernating streams (``COMET_HIBERNATE``, default on), WebSocket on ``/ws/``
(gevent-websocket's handshake), bounded request reads, a 4xx before any bad
WebSocket upgrade. Settings come from the ``COMET_*`` variables, as for
``comet.wsgi``.

What the stock workers give instead: ``-k gevent`` and ``-k gevent_pywsgi``
iterate the stream (one parked greenlet per connection, as ``--hibernate
off``) and answer ``/ws/`` with 426; gevent-websocket's
``GeventWebSocketWorker`` adds WebSocket but still parks a greenlet per
stream. Note that ``--worker-connections`` bounds greenlets, so it no longer
bounds hibernated streams: ``COMET_MAX_CONNECTIONS`` does.
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from comet import config
from comet.server import CometHandler


class Server(PyWSGIServer):
    """gunicorn's pywsgi server, asking the app before any WebSocket upgrade."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pre_start_hook = getattr(self.application, "refuses_websocket", None)


class Worker(GeventPyWSGIWorker):
    server_class = Server

    def init_process(self) -> None:
        settings = config.Settings(**config.from_environment())
        self.wsgi_handler = type("Handler", (CometHandler, PyWSGIHandler), {
            "read_timeout": settings.read_timeout, "hibernate": settings.hibernate})
        super().init_process()

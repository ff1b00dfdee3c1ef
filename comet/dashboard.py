"""``GET /dashboard`` and its stream ``GET /dashboard/events``: the server at a glance.

The page (``comet/static/dashboard.html``, self-contained: its script, style
and charts inline, nothing fetched from elsewhere) opens an EventSource on
``/dashboard/events``, which sends the ``/stats`` snapshot (the whole
server's, summed across ``--workers`` as ``/stats`` sums it) as one event
every second, or every ``?every=`` seconds. The page keeps the last few
minutes of points and draws them; the server keeps nothing per page but the
stream's greenlet.

What a dashboard costs the server is bounded here, whatever its viewers do:

* at most :data:`MOST_STREAMS` streams are held by a process at once; past
  it, a 503 with ``Retry-After`` (counted as the ``dashboard streams`` limit);
* a snapshot is taken at most once per :data:`SHARED_FOR` seconds whatever
  the number of streams, and its event bytes are made once for all of them;
  nothing is done per subscriber connection (a snapshot reads counters);
* a stream ends at shutdown like a subscriber's: an ``event: shutdown``, then
  the last chunk, before the server waits for its handlers.

Nothing here knows the hub: it is handed the callable that ``/stats`` answers
with. Who may ask (``--metrics-from``) is the app's check, before this runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from importlib import resources
from urllib.parse import parse_qs

import gevent.event
import gevent.lock

from comet import wire
from comet.inputs import BadRequest
from comet.limits import DASHBOARD_STREAMS

#: dashboard streams one process holds at once (a few operators' tabs, not a crowd)
MOST_STREAMS = 16
#: seconds between two events of a stream unless ``?every=`` says
EVERY = 1.0
#: the bounds of ``?every=`` (seconds): faster would cost a snapshot per half second per
#: stream for nothing a person can read; slower leaves the chart empty for minutes
EVERY_LEAST, EVERY_MOST = 0.5, 60.0
#: seconds a snapshot serves every stream that ticks meanwhile
SHARED_FOR = 0.25
#: milliseconds an EventSource waits before coming back after the stream ends
RECONNECT_MS = 3000
#: seconds a refused viewer is told to wait
RETRY_AFTER = 5

#: the last event of a stream at shutdown
SHUTDOWN_EVENT = wire.sse_event(b"server shutting down", event="shutdown")


def page() -> bytes:
    """The dashboard page: one file, nothing else to fetch."""
    return resources.files("comet").joinpath("static/dashboard.html").read_bytes()


def every_of(query_string: str) -> float:
    """The ``?every=`` of a stream request, in seconds; a 400 for anything out of bounds."""
    values = parse_qs(query_string, keep_blank_values=True).get("every")
    if not values:
        return EVERY
    text = values[-1][:20]
    try:
        every = float(text)
    except ValueError:
        every = math.nan
    if not EVERY_LEAST <= every <= EVERY_MOST:  # NaN fails both
        raise BadRequest("400 Bad Request", f"every={text!r}: seconds between events, "
                         f"{EVERY_LEAST:g} to {EVERY_MOST:g}")
    return every


def event(snapshot: dict) -> bytes:
    """One SSE event of a snapshot (json.dumps writes no newline: one data line)."""
    return wire.sse_event(json.dumps(snapshot, separators=(",", ":")).encode())


class Dashboards:
    """One process's dashboard streams: how many are held, the snapshot they share,
    and the event that ends them at shutdown."""

    def __init__(self, snapshot: Callable[[], dict], shared_for: float = SHARED_FOR) -> None:
        #: what ``/stats`` answers (the whole server's, in a worker); may block on siblings
        self.snapshot = snapshot
        #: seconds one snapshot serves every stream that ticks meanwhile
        self.shared_for = shared_for
        #: streams held now, at most :data:`MOST_STREAMS`
        self.held = 0
        #: set at shutdown: every stream sends its last event and ends
        self.stopping = gevent.event.Event()
        self._lock = gevent.lock.Semaphore()
        self._latest: tuple[float, bytes] = (-math.inf, b"")

    def open(self, query_string: str) -> DashboardStream:
        """A stream for one viewer, or a 400 (bad ``every``) or a 503 (full, stopping)."""
        every = every_of(query_string)
        if self.stopping.is_set():
            raise BadRequest("503 Service Unavailable", "server is shutting down",
                             (("Retry-After", str(RETRY_AFTER)),))
        if self.held >= MOST_STREAMS:
            raise BadRequest("503 Service Unavailable",
                             f"{MOST_STREAMS} dashboard streams held already",
                             (("Retry-After", str(RETRY_AFTER)),), limit=DASHBOARD_STREAMS)
        self.held += 1
        return DashboardStream(self, every)

    def fresh(self) -> bytes:
        """The latest snapshot's event, taken again only when older than ``shared_for``.

        One taker at a time: a stream that ticks while another is gathering
        the workers' snapshots waits for that one instead of asking again.
        """
        with self._lock:
            taken, data = self._latest
            now = time.monotonic()
            if now - taken >= self.shared_for:
                data = event(self.snapshot())
                self._latest = (now, data)
            return data

    def release(self) -> None:
        self.held -= 1

    def stop(self) -> None:
        """Shutdown: every stream ends after its current event, new ones get a 503."""
        self.stopping.set()


class DashboardStream:
    """One viewer's body: a snapshot event every ``every`` seconds until it goes or
    the server stops. Its place is given back once, by :meth:`close` (WSGI calls it
    whether the body was iterated or not)."""

    __slots__ = ("dashboards", "every", "_closed")

    def __init__(self, dashboards: Dashboards, every: float) -> None:
        self.dashboards = dashboards
        self.every = every
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        dashboards = self.dashboards
        stopping = dashboards.stopping
        yield wire.sse_retry(RECONNECT_MS)
        while not stopping.is_set():
            yield dashboards.fresh()
            stopping.wait(self.every)
        yield SHUTDOWN_EVENT

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.dashboards.release()

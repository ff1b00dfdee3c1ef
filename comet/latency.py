"""How old a message is when it reaches the sockets, measured so seldom that it costs nothing.

Two figures come from here: publish-to-socket latency (the hub: from when a
message was published to when its fan-out's last write was handed to the
kernel) and pub/sub lag (a Redis broker: how old a message was when it was
read from pub/sub). Both are measured on a few messages only, never on each:
a :class:`Sampler` says whether one is due, which is one attribute read while
it is not, and once one is taken the next is due :data:`SAMPLE_PERIOD` later,
by a timer of the event loop rather than a clock read per message. So at a
hundred thousand connections a broadcast pays for the sample only when one
is due (a few clock reads), and the hot path otherwise for nothing.

Where a message was published is the broker's to say. Over Redis a
message's offset is the Redis clock (``seq`` = milliseconds x 1024, docs/
design.rst, "Offsets are time"), so any process delivering it can tell its
age from its id with no extra data (:func:`age`); the in-process broker
delivers in the publisher's own turn, so the hub reads the clock as the
publish begins, only when a sample is due.
"""

from __future__ import annotations

import gevent

#: seconds between two samples at least (per process, per figure): at most ten
#: fan-outs a second are timed, and ten pub/sub reads a second aged
SAMPLE_PERIOD = 0.1

#: upper bounds (seconds) of the publish-to-socket histogram: 1 ms (the Redis
#: clock's resolution) to 10 s (a reader far behind, a replay after an outage)
PUBLISH_TO_SOCKET_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                            1.0, 2.5, 10.0)


class Sampler:
    """Whether a sample is due: at most one every ``period`` seconds.

    ``due`` is True until :meth:`taken`; then False until the event loop's
    timer sets it again ``period`` seconds later. While it is False the
    timer is the only cost, and it runs only after a sample was taken: an
    idle process keeps ``due`` set and no timer at all.
    """

    __slots__ = ("due", "period", "_timer")

    def __init__(self, period: float = SAMPLE_PERIOD) -> None:
        #: True when the next event may be measured
        self.due = True
        self.period = period
        #: the loop's timer that makes it due again, once a sample was taken
        self._timer = None

    def taken(self) -> None:
        """A sample was just measured: the next one is due ``period`` seconds from now.

        A new timer each time, started from the loop's clock brought up to now:
        a gevent timer started again after it fired fires at once, and one
        started from the loop's time of its last turn (a long fan-out ago)
        would fire early; both would let every fan-out be timed.
        """
        self.due = False
        self._timer = gevent.get_hub().loop.timer(self.period, ref=False)
        self._timer.start(self._ready, update=True)

    def _ready(self) -> None:
        self.due = True


def age(published: float, now: float) -> float:
    """Seconds from ``published`` to ``now`` (both epoch seconds), never below 0.

    Over Redis, ``published`` is Redis's clock and ``now`` this host's: across
    machines the age includes the difference of their clocks, and one that
    runs behind would make it negative, which says nothing: 0 instead.
    """
    return max(0.0, now - published)

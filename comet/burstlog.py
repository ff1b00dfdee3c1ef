"""One log line per burst of refusals, not one per request.

A client hammering a limit (a wrong key, a rate, a connection cap) would
otherwise write a line per request, and the log would become the load. A
:class:`BurstLog` writes the first refusal of a quiet period at once, counts
the ones that follow, and writes one summary line per ``every`` seconds while
they keep coming (how many, and the last one's detail); a period with none
ends the burst, and the next refusal is written at once again. Nothing is
lost from the counts, which ``/stats`` keeps; only the lines are spared.

At most one timer is pending per BurstLog; any limit that refuses can keep one
per reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent

#: seconds between two summary lines of one burst
EVERY = 10.0


class BurstLog:
    """``note(detail)`` for each refusal of one kind; the log sees the first and summaries."""

    def __init__(self, log: logging.Logger, what: str, every: float = EVERY,
                 level: int = logging.INFO,
                 later: Callable[[float, Callable[[], None]], object] = gevent.spawn_later
                 ) -> None:
        self.log, self.what, self.every, self.level = log, what, every, level
        self._later = later
        #: refusals since the last line; None: no burst (the next one is written at once)
        self._since: int | None = None
        self._last = ""

    def note(self, detail: str) -> None:
        if self._since is None:
            self.log.log(self.level, "%s: %s", self.what, detail)
            self._since = 0
            self._later(self.every, self._summary)
            return
        self._since += 1
        self._last = detail

    def _summary(self) -> None:
        if not self._since:
            self._since = None  # a quiet period: the burst is over
            return
        self.log.log(self.level, "%s: %d more in the last %g s (the last: %s)",
                     self.what, self._since, self.every, self._last)
        self._since = 0
        self._later(self.every, self._summary)

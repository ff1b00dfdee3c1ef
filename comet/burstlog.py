"""Log a refusal once per burst, not once per request.

A client that is over a limit (a connection cap, a rate, a wrong publisher
key) tends to be over it a thousand times a second; a line each would fill
the disk, bury every other line, and make the log the load. A
:class:`BurstLog` logs the first refusal of a kind at once, then counts the
ones that follow within ``window`` seconds and says how many in one line when
the window has passed (a timer, so the summary comes even if nothing else is
refused); a window with none ends the burst, and the kind's next refusal is
logged at once again. Nothing is lost from the counts, which ``/stats``
keeps; only the lines are spared. Its state is one entry per kind that
refused in the current window: bounded by the number of kinds, never by the
number of clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent

#: seconds after a kind's first line during which its next ones are only counted
WINDOW = 10.0


class BurstLog:
    """Rate-limited log lines, one stream of them per kind of refusal."""

    def __init__(self, logger: logging.Logger, window: float = WINDOW,
                 level: int = logging.WARNING,
                 later: Callable[[float, Callable[[], None]], object] | None = None) -> None:
        self.logger = logger
        self.window = window
        self.level = level
        #: how a summary is scheduled: gevent's timer (tests may collect the calls)
        self._later = later or (lambda delay, call: gevent.spawn_later(delay, call))
        #: kind -> [refusals counted since its last line, the last one's (message, args)]
        self._quiet: dict[str, list] = {}

    def __len__(self) -> int:
        """Kinds in a window now (each holds one entry until its summary)."""
        return len(self._quiet)

    def log(self, kind: str, message: str, *args, peer: str | None = None) -> None:
        """Log ``message % args`` now if ``kind`` is quiet; else count it for the summary.
        ``peer`` (the client's address) is a field of the line (``--log-format json``)."""
        held = self._quiet.get(kind)
        if held is not None:
            held[0] += 1
            held[1] = (message, args)
            return
        self.logger.log(self.level, message, *args, extra={"event": "refused", "peer": peer})
        self._quiet[kind] = [0, None]
        self._later(self.window, lambda: self._summarise(kind))

    def _summarise(self, kind: str) -> None:
        """The window has passed: one line for what it counted, and another window while
        the burst goes on; a window with nothing in it ends the burst."""
        held = self._quiet.get(kind)
        if held is None:
            return
        count, example = held
        if not count:
            del self._quiet[kind]
            return
        message, args = example
        self.logger.log(self.level, "%d more refused in %g s (%s), the last: " + message,
                        count, self.window, kind, *args, extra={"event": "refused"})
        held[0], held[1] = 0, None
        self._later(self.window, lambda: self._summarise(kind))

"""Log a refusal once per burst, not once per request.

A client that is over a limit tends to be over it a thousand times a second;
a line each would fill the disk and bury every other line. A
:class:`BurstLog` logs the first refusal of a kind at once, then counts the
ones that follow within ``window`` seconds and says how many in one line when
the window has passed (a timer, so the summary comes even if nothing else is
refused). Its state is one entry per kind that refused in the current window:
bounded by the number of kinds, never by the number of clients.
"""

from __future__ import annotations

import logging

import gevent


class BurstLog:
    """Rate-limited log lines, one stream of them per kind of refusal."""

    def __init__(self, logger: logging.Logger, window: float = 10.0,
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        #: seconds after a kind's first line during which its next ones are only counted
        self.window = window
        self.level = level
        #: kind -> [refusals counted since its last line, the example kept for the summary]
        self._quiet: dict[str, list] = {}

    def __len__(self) -> int:
        """Kinds in a window now (each holds one entry until its summary)."""
        return len(self._quiet)

    def log(self, kind: str, message: str, *args) -> None:
        """Log ``message % args`` now if ``kind`` is quiet; else count it for the summary."""
        held = self._quiet.get(kind)
        if held is not None:
            held[0] += 1
            held[1] = (message, args)
            return
        self.logger.log(self.level, message, *args)
        self._quiet[kind] = [0, None]
        gevent.spawn_later(self.window, self._summarise, kind)

    def _summarise(self, kind: str) -> None:
        """The window has passed: one line for what it counted, and another window while
        the burst goes on; a window with nothing in it ends the burst (the kind's next
        refusal logs at once)."""
        held = self._quiet.get(kind)
        if held is None:
            return
        count, example = held
        if not count:
            del self._quiet[kind]
            return
        message, args = example
        self.logger.log(self.level, "%d more refused in %g s (%s), the last: " + message,
                        count, self.window, kind, *args)
        held[0], held[1] = 0, None
        gevent.spawn_later(self.window, self._summarise, kind)

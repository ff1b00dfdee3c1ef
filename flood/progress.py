"""The live progress of a long ramp: held / target, connections a second, time left.

A ramp to 100,000 streams at the seed's pace takes hours; without a sign of
life the operator cannot tell a slow ramp from a stuck one. On a terminal the
line is rewritten in place (``\\r``, erase to the end of the line); written
to a file or a pipe (a CI log, ``| tee``) it is a plain line every few
seconds instead, so the log reads as a timeline and carries no carriage-return
smear. :class:`ProgressLine` keeps the two apart; lines printed meanwhile go
through :meth:`ProgressLine.above`, which erases an in-place line first.

The arithmetic and the wording are pure functions (:func:`eta`,
:func:`duration`, :func:`ramp_line`), shared by ``python -m flood`` and
``python -m flood.bench``. The rate is :func:`flood.stats.accept_rate`, the
summary's figure; the time left is at the pace connections were tried so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from flood import stats

#: seconds between plain progress lines when the output is not a terminal
EVERY = 5.0
#: seconds between redraws of the in-place line on a terminal
REDRAW = 0.5
#: the ANSI sequence that takes the cursor back to the start of the line and erases it
ERASE = "\r\x1b[K"

#: snapshot keys the progress line reads, summed over processes (the rest are a min or max)
COUNTS = ("active", "attempted", "connected", "pending")


def eta(done: int, target: int, elapsed: float) -> float | None:
    """Seconds until ``target`` at the pace of ``done`` in ``elapsed`` seconds; None
    before there is a pace to go by."""
    if elapsed <= 0 or done <= 0:
        return None
    return max(0.0, (target - done) / (done / elapsed))


def duration(seconds: float) -> str:
    """``45s``, ``3m32s``, ``2h05m``: a time left, as precise as a person needs."""
    whole = max(0, round(seconds))
    if whole >= 3600:
        hours, rest = divmod(whole, 3600)
        return f"{hours}h{rest // 60:02d}m"
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def ramp_line(total: dict, target: int, elapsed: float) -> str:
    """``ramp: 1,200/10,000 held, 400/s, ETA 22s`` from a (summed) flood snapshot."""
    rate = stats.accept_rate(total)
    left = eta(total["attempted"], target, elapsed)
    pace = f"{rate:,.0f}/s" if rate is not None else "-/s"
    time_left = duration(left) if left is not None else "-"
    return f"ramp: {total['active']:,}/{target:,} held, {pace}, ETA {time_left}"


def done_line(total: dict, target: int, elapsed: float) -> str:
    """The ramp's last line: every connection tried, what is held, how long it took."""
    rate = stats.accept_rate(total)
    pace = f" ({rate:,.0f}/s)" if rate is not None else ""
    return (f"ramp: done, {total['active']:,}/{target:,} held after "
            f"{duration(elapsed)}{pace}")


def light_sum(snapshots: list[dict]) -> dict:
    """The few counts the line needs, summed over processes without merging their
    latency histograms (what :func:`flood.stats.sum_snapshots` also does, and what
    would cost a progress tick at a million connections)."""
    total = {key: sum(s[key] for s in snapshots) for key in COUNTS}
    firsts = [s["first_connect"] for s in snapshots if s["first_connect"]]
    total["first_connect"] = min(firsts, default=0.0)
    total["last_connect"] = max((s["last_connect"] for s in snapshots), default=0.0)
    return total


class ProgressLine:
    """One progress line: redrawn in place on a terminal, else printed every ``every``
    seconds; nothing at all when ``quiet``."""

    def __init__(self, out: TextIO, in_place: bool, every: float = EVERY,
                 quiet: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.in_place = in_place
        self.every = every
        self.quiet = quiet
        self.clock = clock
        self._shown = ""        #: the line drawn in place now ("" when none is)
        self._next = clock() + (REDRAW if in_place else every)

    def show(self, text: str) -> None:
        """The ramp's state now: drawn if it is time to."""
        now = self.clock()
        if self.quiet or now < self._next:
            return
        self._next = now + (REDRAW if self.in_place else self.every)
        if self.in_place:
            self._shown = text
            self.out.write(ERASE + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self, text: str) -> None:
        """The last line, kept: the in-place line becomes an ordinary one."""
        if not self.quiet:
            self.out.write((ERASE if self.in_place else "") + text + "\n")
            self.out.flush()
        self._shown = ""
        self.quiet = True  # the ramp is over: nothing more to show

    def above(self, text: str) -> None:
        """Print an ordinary line; a line drawn in place is erased first (the next
        :meth:`show` draws it again, below)."""
        self.out.write((ERASE if self._shown else "") + text + "\n")
        self.out.flush()
        self._shown = ""

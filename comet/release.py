"""Give memory back to the system after a crowd of connections leaves.

CPython's allocator and glibc's malloc keep what a crowd freed for the next
one: measured here, after 10,000 hibernated streams connected and left, RSS
stayed 13.6 % above where it started (``docs/benchmarks.rst``). When the
connections held fall to a quarter of their peak (a peak of at least
``min_peak``), :class:`MemoryReleaser` shrinks the router's id table (a
dict never shrinks by itself), runs a full ``gc.collect()`` and
glibc's ``malloc_trim(0)`` once, a second later, off the hot path, so RSS
follows the load down. On a libc without ``malloc_trim`` only the collection
runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

import gevent

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class MemoryReleaser:
    """Watches the number of connections held; releases memory after a big drop."""

    def __init__(self, held, min_peak: int = 1000, delay: float = 1.0, compact=None) -> None:
        #: returns the connections held now
        self.held = held
        self.min_peak = min_peak
        #: called first: shrinks tables sized for the peak (the router's id dict)
        self.compact = compact
        self.delay = delay
        self.peak = 0
        self.releases = 0
        self._pending = None
        self._trim = _malloc_trim()

    def observe(self, held: int) -> None:
        """Call with the count after each connection opens or closes (two int compares)."""
        if held > self.peak:
            self.peak = held
        elif (held <= self.peak // 4 and self.peak >= self.min_peak
              and self._pending is None):
            self._pending = gevent.spawn_later(self.delay, self.release)

    def release(self) -> None:
        held = self.held()
        if self.compact is not None:
            self.compact()
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        log.info("released memory after connections fell from %d to %d", self.peak, held)
        self.releases += 1
        self.peak = held
        self._pending = None

"""MemoryReleaser: when a crowd of connections leaves, memory is released once, later."""

import gevent

from comet.release import MemoryReleaser
from tests.realserver import wait_until


def recording(held: list[int], delay: float) -> tuple[MemoryReleaser, list[int]]:
    """A releaser of ``held[0]`` connections (a crowd: 100) and the counts it compacted at."""
    compacted: list[int] = []
    releaser = MemoryReleaser(lambda: held[0], min_peak=100, delay=delay,
                              compact=lambda: compacted.append(held[0]))
    return releaser, compacted


def test_release_runs_once_after_the_count_falls_to_a_quarter_of_its_peak():
    held = [0]
    releaser, compacted = recording(held, 0.01)
    for held[0] in range(1, 401):
        releaser.observe(held[0])
    for held[0] in range(400, 99, -1):
        releaser.observe(held[0])
    assert releaser.releases == 0  # still above a quarter of 400
    for held[0] in range(99, -1, -1):
        releaser.observe(held[0])
    wait_until(lambda: releaser.releases, what="a release")
    assert releaser.releases == 1 and compacted == [0] and releaser.peak == 0


def test_small_crowds_do_not_trigger_a_release():
    releaser = MemoryReleaser(lambda: 0, min_peak=1000, delay=0.01)
    for held in [*range(1, 500), *range(500, -1, -1)]:
        releaser.observe(held)
    assert releaser._pending is None  # none scheduled, so none will ever run
    assert releaser.releases == 0


def test_a_crowd_arriving_is_released_after_once_it_stops_growing():
    held = [0]
    releaser, compacted = recording(held, 0.05)
    for held[0] in range(1, 150):
        releaser.observe(held[0])
    assert releaser._pending is not None and releaser.releases == 0
    # still arriving when it first looks: it looks again, then releases once
    for _ in range(3):
        held[0] += 20
        releaser.observe(held[0])
        gevent.sleep(0.03)
    wait_until(lambda: releaser.releases, what="a release after the crowd")
    assert releaser.releases == 1 and releaser.floor == held[0] == 209
    assert compacted == []  # no table to shrink: nobody left
    # a small rise after it is no new crowd
    for held[0] in range(210, 260):
        releaser.observe(held[0])
    assert releaser._pending is None

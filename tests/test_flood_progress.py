"""The ramp's progress line: its arithmetic and wording, the printer's two manners, and
a real ``python -m flood`` against a real comet server with stdout not a terminal."""

from __future__ import annotations

import io
import re

import pytest

from flood import progress
from flood.progress import ERASE, ProgressLine, done_line, duration, eta, light_sum, ramp_line
from tests.floodservers import run_flood, write_urls
from tests.realserver import RealServer

RAMP = re.compile(r"^ramp: (\d+)/(\d+) held, (\S+)/s, ETA (\S+)$", re.M)


def snapshot(**counts) -> dict:
    base = {"active": 0, "attempted": 0, "connected": 0, "pending": 0,
            "first_connect": 0.0, "last_connect": 0.0}
    return {**base, **counts}


def test_the_time_left_is_at_the_pace_tried_so_far():
    assert eta(320_000, 1_000_000, 100.0) == pytest.approx(212.5)   # 3,200 a second
    assert eta(500, 1000, 10.0) == pytest.approx(10.0)
    assert eta(1000, 1000, 10.0) == 0.0
    assert eta(1200, 1000, 10.0) == 0.0, "never a negative time left"
    assert eta(0, 1000, 10.0) is None and eta(10, 1000, 0.0) is None


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0, 0.4, 9.6, 59, 60, 212.5, 3599, 3600, 7500, -3)] == [
        "0s", "0s", "10s", "59s", "1m00s", "3m32s", "59m59s", "1h00m", "2h05m", "0s"]


def test_the_ramp_line_says_held_of_target_the_rate_and_the_time_left():
    total = snapshot(active=1_200, attempted=1_250, connected=1_201,
                     first_connect=1000.0, last_connect=1003.0)  # 1,200 more in 3 s
    assert ramp_line(total, 10_000, 5.0) == "ramp: 1,200/10,000 held, 400/s, ETA 35s"
    assert ramp_line(snapshot(), 10, 0.5) == "ramp: 0/10 held, -/s, ETA -"
    assert done_line(total, 1_250, 62.0) == "ramp: done, 1,200/1,250 held after 1m02s (400/s)"


def test_the_light_sum_adds_counts_and_keeps_the_earliest_and_latest_start():
    one = snapshot(active=3, attempted=5, connected=4, pending=1, first_connect=10.0,
                   last_connect=12.0)
    two = snapshot(active=2, attempted=2, connected=2, first_connect=9.0, last_connect=11.0)
    idle = snapshot()
    total = light_sum([one, two, idle])
    assert total == {"active": 5, "attempted": 7, "connected": 6, "pending": 1,
                     "first_connect": 9.0, "last_connect": 12.0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_the_line_is_printed_every_few_seconds():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, in_place=False, every=5.0, clock=clock)
    for second in range(12):
        line.show(f"at {second}")
        clock.now += 1.0
    line.above("Stats: {1,0,0}")
    line.finish("ramp: done")
    line.show("after the end")
    assert out.getvalue() == "at 5\nat 10\nStats: {1,0,0}\nramp: done\n"
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_line_is_redrawn_in_place_and_other_lines_go_above():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, in_place=True, clock=clock)
    clock.now += progress.REDRAW
    line.show("ramp: 1/3")
    line.show("ramp: too soon")  # within REDRAW of the last: skipped
    clock.now += progress.REDRAW
    line.show("ramp: 2/3")
    line.above("Closed: status 503")
    line.finish("ramp: done")
    assert out.getvalue() == (f"{ERASE}ramp: 1/3{ERASE}ramp: 2/3{ERASE}Closed: status 503\n"
                              f"{ERASE}ramp: done\n")


def test_quiet_shows_no_progress_but_the_other_lines():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, in_place=False, every=1.0, quiet=True, clock=clock)
    clock.now += 10
    line.show("ramp: 1/3")
    line.finish("ramp: done")
    line.above("Summary:")
    assert out.getvalue() == "Summary:\n"


@pytest.fixture
def comet_server():
    server = RealServer("--interval", "60").start()
    yield server
    server.stop()


def test_a_real_flood_off_a_terminal_prints_periodic_progress_lines(comet_server, tmp_path):
    urls = write_urls(tmp_path, comet_server.port, [f"/test/p{n}" for n in range(30)])
    result = run_flood(urls, "--wait", "100", "--progress-every", "0.5", "--report", "60",
                       "--duration", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\r" not in out and "\x1b" not in out, "plain lines when stdout is not a terminal"
    lines = RAMP.findall(out)
    assert len(lines) >= 3, out
    held = [int(h) for h, target, _, _ in lines]
    assert all(target == "30" for _, target, _, _ in lines)
    assert held == sorted(held) and held[-1] < 30, "held grows while ramping"
    assert any(rate != "-" for _, _, rate, _ in lines) and lines[-1][3] != "-"
    assert re.search(r"^ramp: done, 30/30 held after \d+s \(\d+/s\)$", out, re.M), out
    assert re.search(r"^Stats: \{30,0,\d+\}$", out, re.M), "the seed's line is untouched"


def test_quiet_silences_the_progress_of_a_real_flood(comet_server, tmp_path):
    urls = write_urls(tmp_path, comet_server.port, [f"/test/q{n}" for n in range(10)])
    result = run_flood(urls, "--wait", "100", "--progress-every", "0.5", "--duration", "2",
                       "--quiet")
    assert result.returncode == 0, result.stderr
    assert "ramp:" not in result.stdout and "Summary:" in result.stdout

"""The fuzzer (flood/fuzz.py, flood/mutate.py) against the real server, in both lives.

1,500 inputs of six kinds, at most 100 connections at a time, while three honest
SSE subscribers listen and a publisher sends them numbered messages. Nothing may
be a 5xx, a malformed answer, a traceback or exception in the server's log; every
honest message arrives; the fuzzer's connections and ids are all gone afterwards;
and the server's RSS grows by at most :data:`RSS_MARGIN`.
"""

from __future__ import annotations

import pytest

from flood import fuzz, mutate
from flood.head import HeadError
from tests.workerservers import WorkersServer

#: RSS growth allowed over a run, measured after a warm-up of 60 inputs. Up to 100
#: connections are in flight at once (~20 KB each while a request is parsed: greenlet,
#: buffers, environ), and pymalloc and gevent keep what the peak used; seen here: 1.5
#: to 2 MiB. 8 MiB still catches a leak of 6 KB an input.
RSS_MARGIN = 8 * 2**20

#: dead streams are found when the server next writes to them: every second here
FAST_FLAGS = ("--read-timeout", "1", "--poll-timeout", "1", "--interval", "1",
              "--heartbeat", "1")


def test_the_same_seed_makes_the_same_inputs_of_every_kind():
    made = mutate.inputs(7, 60, "127.0.0.1:1")
    assert made == mutate.inputs(7, 60, "127.0.0.1:1") != mutate.inputs(8, 60, "127.0.0.1:1")
    assert {inp.kind for inp in made} == set(mutate.KINDS)


def test_statuses_are_read_through_pipelined_answers_up_to_a_stream():
    answers = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
               b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nHTTP/1.1 500 in a body\r\n")
    assert fuzz.statuses_in(answers) == [200, 400, 200]
    with pytest.raises(HeadError):
        fuzz.statuses_in(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n")


def test_a_traceback_or_an_exception_is_a_finding_a_refusal_naming_one_is_not():
    lines = ["2026-12-01 02:48:36,902 4670 INFO comet.app: 400 POST /send: line 1: not JSON "
             "(UnicodeDecodeError); nothing was published (client 127.0.0.1)",
             "Traceback (most recent call last):", "BrokenPipeError: [Errno 32] Broken pipe",
             "2026-12-01 02:48:36,902 4670 ERROR comet.error: boom: KeyError"]
    assert fuzz.log_findings(lines) == lines[1:]


def test_fuzzing_the_real_server_finds_nothing_and_loses_nothing(start_server):
    server = start_server(*FAST_FLAGS)
    report = fuzz.run(server.url, 1500, seed=12, concurrency=100,
                      log_lines=lambda: list(server.lines))
    print("\n".join(report.lines()))
    assert sum(report.tally.tried.values()) == 1500
    assert all(report.tally.tried[kind] == 250 for kind in mutate.KINDS)
    assert not report.tally.server_errors and not report.tally.malformed
    assert not report.log_findings
    assert report.honest_messages > 0 and report.honest_lost == 0
    assert not report.honest_dropped
    assert report.left_connections == 0 and report.left_ids == 0
    assert report.rss_after - report.rss_before <= RSS_MARGIN
    assert server.proc.poll() is None


def test_fuzzing_two_workers_over_redis_finds_nothing_and_loses_nothing(redis_server):
    """The same against a master and two workers sharing one Redis: the honest
    subscribers and the fuzzer's connections land on either worker, the publisher's
    messages cross between them through Redis."""
    server = WorkersServer("--redis", redis_server.url, *FAST_FLAGS).start()
    try:
        report = fuzz.run(server.url, 600, seed=3, concurrency=100,
                          log_lines=lambda: list(server.lines))
        print("\n".join(report.lines()))
        assert sum(report.tally.tried.values()) == 600
        assert not report.tally.server_errors and not report.tally.malformed
        assert not report.log_findings
        assert report.honest_messages > 0 and report.honest_lost == 0
        assert not report.honest_dropped
        assert report.left_connections == 0 and report.left_ids == 0
        assert server.proc.poll() is None and len(server.workers()) == 2
    finally:
        server.stop()

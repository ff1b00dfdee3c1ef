"""Group commit (comet.broker.coalesce): callers that meet in flight share the next call.

The call here is a real function that yields to the event loop, as a socket
round trip does; the brokers' own use is tested in tests/test_broker.py on a
real Redis and a real cluster.
"""

from __future__ import annotations

import gevent

from comet.broker.coalesce import Coalescer


class Calls:
    """A call that takes a turn of the event loop and answers each item doubled."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        gevent.sleep(0.001)
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError(f"lost with {self.fail_on}")
        return [item * 2 for item in items]


def run_at_once(coalescer: Coalescer, groups: list[list[int]]) -> list[gevent.Greenlet]:
    jobs = [gevent.spawn(coalescer, group) for group in groups]
    gevent.joinall(jobs)
    return jobs


def test_a_lone_caller_goes_at_once_with_its_own_items():
    calls = Calls()
    assert Coalescer(calls)([1, 2]) == [2, 4]
    assert calls.batches == [[1, 2]]


def test_callers_that_meet_in_flight_share_the_next_call_and_get_their_own_results():
    calls = Calls()
    coalescer = Coalescer(calls)
    jobs = run_at_once(coalescer, [[n] for n in range(10)] + [[100, 101]])
    assert [job.value for job in jobs] == [[n * 2] for n in range(10)] + [[200, 202]]
    # the first went alone; everyone who came while it ran went in one call, in order
    assert calls.batches == [[0], [*range(1, 10), 100, 101]]
    assert (coalescer.calls, coalescer.items) == (2, 12)


def test_a_call_holds_at_most_max_items_and_the_rest_go_next():
    calls = Calls()
    jobs = run_at_once(Coalescer(calls, max_items=4), [[n] for n in range(10)])
    assert [job.value for job in jobs] == [[n * 2] for n in range(10)]
    assert calls.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_caller_larger_than_max_items_still_goes_whole():
    calls = Calls()
    jobs = run_at_once(Coalescer(calls, max_items=2), [[0], [1, 2, 3], [4]])
    assert [job.value for job in jobs] == [[0], [2, 4, 6], [8]]
    assert calls.batches == [[0], [1, 2, 3], [4]]


def test_every_caller_of_a_failed_call_gets_its_error_and_later_calls_still_go():
    calls = Calls(fail_on=5)
    coalescer = Coalescer(calls)
    jobs = run_at_once(coalescer, [[n] for n in range(8)])
    assert jobs[0].value == [0]
    for job in jobs[1:]:
        assert isinstance(job.exception, ConnectionError)
    assert coalescer([9]) == [18]  # the way is free again


def test_the_first_callers_error_is_its_own_and_the_queued_still_go():
    calls = Calls(fail_on=0)
    coalescer = Coalescer(calls)
    jobs = run_at_once(coalescer, [[0], [1], [2]])
    assert isinstance(jobs[0].exception, ConnectionError)
    assert [job.value for job in jobs[1:]] == [[2], [4]]

"""The logins' waiters of comet/broker/pubsublink.py: confirmed, timed out, or failed at once."""

import time

import gevent

from comet.broker.pubsublink import Waiters


def test_a_login_returns_once_every_one_of_its_ids_is_confirmed():
    waiters = Waiters()
    login = gevent.spawn(waiters.wait, ["a", "b"], 5.0)
    gevent.sleep(0)
    waiters.confirmed("a")
    gevent.sleep(0)
    assert not login.ready()
    waiters.confirmed("b")
    assert login.get(timeout=1) is True


def test_a_lost_link_fails_every_waiting_login_at_once_not_after_its_timeout():
    waiters = Waiters()
    logins = [gevent.spawn(waiters.wait, [f"id{n}", "shared"], 30.0) for n in range(3)]
    gevent.sleep(0)
    started = time.monotonic()
    waiters.fail_all()
    assert [login.get(timeout=1) for login in logins] == [False] * 3
    assert time.monotonic() - started < 1  # not the 30 s bound
    waiters.confirmed("shared")  # a late confirmation finds nobody: no error


def test_a_confirmation_that_never_comes_times_out_and_leaves_nothing_behind():
    waiters = Waiters()
    assert waiters.wait(["x"], 0.05) is False
    assert waiters._by_id == {}

"""The pure parts of the limits: whom a connection counts against, the table, the bucket,
and the burst log (real logging, real gevent timers; the bucket's clock is a list)."""

from __future__ import annotations

import logging

import gevent

from comet.burstlog import BurstLog
from comet.limits import ClientTable, client_key
from comet.ratelimit import TokenBucket
from tests.realserver import wait_until


def test_ipv4_counts_by_address_and_ipv6_by_its_64():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("") == ""


def test_the_table_holds_an_entry_only_while_its_client_holds_a_connection():
    table = ClientTable(limit=2)
    table.add("a")
    table.add("a")
    assert table.full("a") and not table.full("b") and len(table) == 1 and table.total == 2
    table.remove("a")
    table.remove("a")
    assert len(table) == 0 and table.total == 0 and not table.full("a")


def test_the_bucket_allows_a_seconds_worth_then_refills_at_its_rate():
    now = [100.0]
    bucket = TokenBucket(4, clock=lambda: now[0])

    def passes() -> bool:
        return bucket.take() is None

    assert [passes() for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.5
    assert bucket.ready() and passes() and passes() and not passes()
    now[0] += 60
    assert bucket.tokens <= 4 and [passes() for _ in range(5)].count(True) == 4


def test_a_burst_is_one_line_at_once_and_one_summary_per_window(caplog):
    logger = logging.getLogger("test.burst")
    burst = BurstLog(logger, window=0.2)
    with caplog.at_level(logging.WARNING, logger="test.burst"):
        for n in range(50):
            burst.log("too many", "refused client %d", n)
        burst.log("too slow", "slow client")
        assert [r.getMessage() for r in caplog.records] == ["refused client 0", "slow client"]
        wait_until(lambda: len(caplog.records) == 3, what="the summary")
        assert caplog.records[2].getMessage() == \
            "49 more refused in 0.2 s (too many), the last: refused client 49"
        wait_until(lambda: len(burst) == 0, what="quiet again")
        burst.log("too many", "refused client %d", 50)
        assert caplog.records[-1].getMessage() == "refused client 50"
        gevent.sleep(0)

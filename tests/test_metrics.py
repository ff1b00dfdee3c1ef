"""``GET /metrics``: a real server scraped over HTTP and read with prometheus_client's parser.

Counters must move by exactly what the test did, agree with ``/stats``, add up
across ``--workers`` (a real redis-server), pass ``promtool check metrics``
(Debian's ``prometheus``; skipped without it, failed under ``CI=true``), and
only the peers of ``--metrics-from`` may read them. The pure parts (the
address list, the histogram's sums) are tested directly.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from comet.peers import Peers
from comet.stats import FANOUT_BOUNDS, Histogram, summed
from tests.chunked import open_stream
from tests.realserver import post
from tests.test_stream import unread_stream
from tests.workerservers import WorkersServer, events_on_every_worker


class Scrape:
    """One scrape of ``/metrics``: its text, and every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in self.families for s in family.samples}

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


def scrape(server) -> Scrape:
    answer = requests.get(server.url + "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.text)


def moved(before: Scrape, after: Scrape) -> dict:
    """Every sample that changed between two scrapes, by how much."""
    return {key: after.samples[key] - before.samples.get(key, 0) for key in after.samples
            if after.samples[key] != before.samples.get(key, 0)}


#: samples that move by themselves (memory, descriptors, time), by how fast a fan-out was,
#: or by when a sample came due (publish-to-socket latency: tests/test_latency.py)
VOLATILE = ("comet_resident_memory_bytes", "comet_open_files", "comet_uptime_seconds",
            "comet_broadcast_fanout_seconds_bucket", "comet_broadcast_fanout_seconds_sum",
            "comet_publish_to_socket_seconds_bucket", "comet_publish_to_socket_seconds_sum",
            "comet_publish_to_socket_seconds_count")


def test_every_family_has_help_and_type(server):
    found = scrape(server)
    assert found.families
    for family in found.families:
        assert family.name.startswith("comet_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
    helps = [line for line in found.text.splitlines() if line.startswith("# HELP ")]
    types = [line for line in found.text.splitlines() if line.startswith("# TYPE ")]
    assert len(helps) == len(types) == len(found.families)


def test_counters_move_by_exactly_what_was_done_and_agree_with_stats(server):
    streams = [open_stream(server.port, "/test/m") for _ in range(2)]
    for stream in streams:
        stream.next_chunk()  # the welcome: logged in
    server.wait_for(lambda s: s["connections"]["test"] == 2, what="two streams")
    before = scrape(server)
    for n in range(3):
        assert post(server, "/send/m", b"hello %d" % n)["delivered"] == 2
    assert post(server, "/broadcast", b"all")["delivered"] == 2
    batch = requests.post(server.url + "/send", data=b'{"id": "m", "message": "a"}\n'
                          b'{"id": "nobody", "message": "b"}\n',
                          headers={"Content-Type": "application/x-ndjson"}, timeout=10)
    assert batch.json() == {"accepted": 2, "delivered": 2}
    after = scrape(server)
    assert {key: value for key, value in moved(before, after).items()
            if key[0] not in VOLATILE} == {
        ("comet_messages_published_total", (("path", "send"),)): 3,
        ("comet_messages_published_total", (("path", "broadcast"),)): 1,
        ("comet_messages_published_total", (("path", "batch"),)): 2,
        ("comet_deliveries_total", (("transport", "test"),)): 3 * 2 + 2 + 2,
        ("comet_broadcast_fanout_seconds_count", ()): 1,
        ("comet_history_messages", ()): 6,
    }
    assert after("comet_broadcast_fanout_seconds_bucket", le="+Inf") == 1
    assert after("comet_connections", transport="test") == 2
    assert after("comet_ids") == 1
    stats = server.stats()
    assert after("comet_deliveries_total", transport="test") == stats["messages"]["out"] == 10
    assert after("comet_publish_to_socket_seconds_count") >= 1, "the first fan-out is timed"
    assert after("comet_connections_accepted_total") == stats["accepted"] == 2
    assert sum(after("comet_messages_published_total", path=p)
               for p in ("send", "batch", "broadcast")) == stats["messages"]["in"] == 6
    assert after("comet_broadcast_fanout_seconds_count") == stats["fanout_seconds"]["count"]


def test_a_slow_consumer_is_one_drop_and_its_messages_are_counted(start_server):
    server = start_server("--interval", "60", "--queue-limit", "4", "--write-timeout", "600")
    sock = unread_stream(server, "slow")
    before = scrape(server)
    for _ in range(200):  # the client reads nothing: kernel buffers fill, then the queue
        if post(server, "/send/slow", b"x" * 60000)["delivered"] == 0:
            break
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="the drop")
    after = scrape(server)
    assert after("comet_drops_total", reason="slow consumer") == 1
    assert "comet_drops_total" not in {key[0] for key in before.samples}
    assert after("comet_messages_dropped_total") == stats["messages"]["dropped"] >= 5
    assert after("comet_connections_ended_total", reason="slow consumer") == 1
    assert after("comet_connections", transport="test") == 0
    sock.close()


def test_refusals_and_resumes_are_counted_by_reason(start_server):
    server = start_server("--max-connections", "1", "--interval", "0.2", "--heartbeat", "0.2")
    held = open_stream(server.port, "/events/r")
    held.next_chunk()
    assert requests.get(server.url + "/test/r2", timeout=10).status_code == 503
    held.close()
    server.wait_for(lambda s: s["connections"]["total"] == 0, what="the stream closed")
    kept = post(server, "/send/r", b"kept")["message"]
    for last in (kept, "ffffffff-1"):  # covered by history; another epoch: missed
        resumed = open_stream(server.port, f"/events/r?last_event_id={last}")
        resumed.next_chunk()
        resumed.close()
        server.wait_for(lambda s: s["connections"]["total"] == 0, what="the resume closed")
    found = scrape(server)
    assert found("comet_connections_refused_total", reason="server full") == 1
    assert found("comet_connections_refused_total", reason="shutting down") == 0
    assert found("comet_resumes_total", result="recovered") == 1
    assert found("comet_resumes_total", result="missed") == 1
    assert server.stats()["refused_reasons"] == {"server full": 1}


def get_from(server, path: str, source: str) -> tuple[int, str]:
    """GET ``path`` from the loopback address ``source`` (127.0.0.x: another peer)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_metrics_and_stats_answer_only_the_peers_of_metrics_from(start_server):
    server = start_server("--metrics-from", "127.0.0.2, 10.0.0.0/8")
    for path in ("/metrics", "/stats", "/metrics", "/metrics"):
        status, body = get_from(server, path, "127.0.0.1")
        assert status == 403 and body == "not from this address (--metrics-from)\n"
    status, body = get_from(server, "/metrics", "127.0.0.2")
    assert status == 200
    found = Scrape(body)
    assert found("comet_limit_refusals_total", limit="metrics from elsewhere") == 4
    assert get_from(server, "/send/x", "127.0.0.1")[0] == 405, "only what it names is closed"
    server.wait_for_log("403 GET /metrics: not from this address")
    first = [line for line in server.lines if "not from this address" in line
             and "more refused" not in line]
    assert len(first) == 1, "one line for a burst, the rest in its summary"


def test_a_scrape_passes_promtool(start_server):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not on PATH but CI=true: .ci/run must install prometheus")
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    server = start_server("--max-connections", "1", "--interval", "0.2", "--heartbeat", "0.2")
    held = open_stream(server.port, "/test/p")
    held.next_chunk()
    requests.get(server.url + "/test/p2", timeout=10)  # refused: a labelled sample
    post(server, "/broadcast", b"all")
    held.close()
    server.wait_for(lambda s: s["ends"], what="an end counted")
    text = requests.get(server.url + "/metrics", timeout=10).text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip() \
        and not checked.stderr.strip(), (checked.stdout, checked.stderr)


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(server):
    answer = requests.get(server.url + "/metrics", timeout=10,
                          headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


# -- across workers ---------------------------------------------------------------------


@pytest.fixture
def workers(redis_server):
    srv = WorkersServer("--redis", redis_server.url, "--interval", "60").start()
    yield srv
    srv.stop()


def test_workers_sums_are_the_whole_servers(workers):
    streams = events_on_every_worker(workers)
    for n in range(len(streams)):
        post(workers, f"/send/e{n}", b"one each")
    post(workers, "/broadcast", b"all")
    want = 2 * len(streams)
    stats = workers.wait_for(lambda s: s["messages"]["out"] == want, what="every delivery")
    found = scrape(workers)
    entries = stats["workers"]
    assert len(entries) == 2 and all("error" not in w for w in entries)
    assert found("comet_workers", state="answering") == 2
    assert found("comet_workers", state="silent") == 0
    assert found("comet_connections", transport="events") == len(streams) == sum(
        w["connections"]["events"] for w in entries)
    assert found("comet_deliveries_total", transport="events") == want == sum(
        w["deliveries"]["events"] for w in entries)
    assert found("comet_publish_to_socket_seconds_count") >= 2, "each worker's first fan-out"
    assert found("comet_broker_pubsub_lag_seconds") == max(
        w["broker"]["pubsub_lag_seconds"] for w in entries)
    assert found("comet_messages_published_total", path="send") + found(
        "comet_messages_published_total", path="broadcast") == len(streams) + 1
    assert found("comet_broadcast_fanout_seconds_count") == 2, "one observation per worker"
    assert found("comet_broker_up") == 1
    assert found("comet_broker_subscribed_ids") == len(streams)
    assert found("comet_resident_memory_bytes") > 0
    assert found("comet_open_files") > len(streams), "every worker's descriptors, added up"
    assert found("comet_broker_info", kind="redis") == 1


# -- the pure parts -----------------------------------------------------------------------


def test_peers_take_addresses_and_networks_and_refuse_nonsense():
    peers = Peers.parse("127.0.0.0/8, ::1, 10.1.2.3")
    assert "127.9.9.9" in peers and "::1" in peers and "10.1.2.3" in peers
    assert "::ffff:127.0.0.1" in peers, "an IPv4 peer on an IPv6 socket is its IPv4 address"
    assert "10.1.2.4" not in peers and "::2" not in peers
    assert None not in peers and "" not in peers and "not-an-ip" not in peers
    assert "1.2.3.4" in Peers.parse("0.0.0.0/0,::/0")
    for bad in ("", " , ", "127.0.0.1,nope", "300.1.1.1"):
        with pytest.raises(ValueError):
            Peers.parse(bad)


def test_histograms_add_up_across_workers():
    one, two = Histogram(FANOUT_BOUNDS), Histogram(FANOUT_BOUNDS)
    one.observe(0.0001)   # on a bound: in that bucket (le)
    one.observe(0.003)
    two.observe(20.0)     # past every bound: +Inf only
    total = summed([{"fanout_seconds": one.snapshot()}, {"fanout_seconds": two.snapshot()}])
    fanout = total["fanout_seconds"]
    assert fanout["count"] == 3 and fanout["sum"] == pytest.approx(20.0031)
    assert fanout["buckets"]["0.0001"] == 1
    assert fanout["buckets"]["0.005"] == 2
    assert fanout["buckets"]["10.0"] == 2 and fanout["buckets"]["+Inf"] == 3

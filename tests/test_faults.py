"""Faults and deploys with nothing lost: ``flood.audit`` counts, a real server suffers.

Each test runs ``python -m flood.audit`` as a process (resuming SSE subscribers and a
publisher whose every accepted message must arrive once), waits for its "publishing"
line, does the fault to real processes (SIGKILL a worker, SIGHUP the master, SIGTERM
and replace the server), and reads the audit's JSON report. The audit's own counting
is checked first, on ledgers with known contents, so that a clean report means
something.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading

import gevent.socket
import pytest

from comet import config, server
from comet.app import CometApp
from flood import publishkey
from flood.audit import Audit, Ledger
from tests import lossylink
from tests.realserver import RealServer, free_port
from tests.workerservers import WorkersServer


class AuditProcess:
    """``python -m flood.audit`` against ``url``; its output lines as they come."""

    def __init__(self, tmp_path, url: str, *args: str, env: dict | None = None) -> None:
        self.report_path = tmp_path / "audit.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flood.audit", url, "--json", str(self.report_path),
             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.publishing = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("publishing:"):
                self.publishing.set()
        self.publishing.set()

    def wait_publishing(self) -> None:
        assert self.publishing.wait(90) and self.proc.poll() is None, "\n".join(self.lines)

    def report(self, timeout: float = 180) -> dict:
        self.proc.wait(timeout)
        assert self.report_path.exists(), "\n".join(self.lines)
        return json.loads(self.report_path.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def audits(tmp_path):
    started: list[AuditProcess] = []

    def start(url: str, *args: str, env: dict | None = None) -> AuditProcess:
        audit = AuditProcess(tmp_path, url, *args, env=env)
        started.append(audit)
        return audit

    yield start
    for audit in started:
        audit.stop()


@pytest.fixture
def workers(redis_server):
    started: list[WorkersServer] = []

    def start(*args: str) -> WorkersServer:
        srv = WorkersServer("--redis", redis_server.url, "--sse-retry", "300", *args).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def assert_nothing_lost(report: dict) -> None:
    assert report["accepted"] > 0 and report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["unexpected"] == 0 and report["told_missed"] == 0, report
    assert report["delivered"] >= report["accepted"], report


# -- the audit's counting ------------------------------------------------------------------


def test_the_count_sees_a_silent_loss_a_duplicate_a_told_loss_and_uncertain_sends():
    audit = Audit("http://127.0.0.1:1", subscribers=3, rate=1.0)
    silent, told, fine = (audit.ledgers[id] for id in audit.ids)
    for led, accepted, arrived in ((silent, {0, 1, 2}, [0, 2, 2]), (told, {0, 1}, [0]),
                                   (fine, {0, 1}, [1, 0])):
        led.accepted |= accepted
        for seq in arrived:
            led.got(seq)
    told.missed_events = 1
    fine.uncertain.add(2)  # may arrive or not: neither lost nor unexpected
    report = audit._count(1.0)
    assert (report.lost, report.duplicates, report.told_missed, report.out_of_order) == (1, 1, 1, 1)
    assert report.delivered == 6 and report.unexpected == 0 and not report.clean


def test_a_message_from_a_refused_batch_that_arrives_is_unexpected():
    led = Ledger()
    led.got(7)
    audit = Audit("http://127.0.0.1:1", subscribers=1, rate=1.0)
    audit.ledgers[audit.ids[0]] = led
    assert audit._count(1.0).unexpected == 1


def test_a_quiet_run_loses_nothing_and_a_restart_without_redis_is_told_not_hidden(audits):
    """Against one process with its in-process history: nothing lost while it runs; a
    restart takes that history with it, and the resumed clients are told (``missed``)."""
    port = free_port()
    srv = RealServer("--port", str(port), "--sse-retry", "300").start()
    try:
        audit = audits(srv.url, "--subscribers", "50", "--rate", "200", "--for", "3",
                       "--settle", "20")
        audit.wait_publishing()
        assert srv.terminate() == 0
        srv = RealServer("--port", str(port), "--sse-retry", "300").start()
        report = audit.report()
    finally:
        srv.stop()
    assert report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["missed_events"] == 50 and report["reconnects"] >= 50, report


# -- faults --------------------------------------------------------------------------------


def test_a_worker_killed_under_publishing_loses_nothing_and_is_restarted(workers, audits):
    srv = workers()
    audit = audits(srv.url, "--subscribers", "120", "--rate", "400", "--for", "6")
    audit.wait_publishing()
    victim = srv.workers()[1]
    os.kill(victim, signal.SIGKILL)
    srv.wait_for_log(f"worker 1 (pid {victim}) died: killed by SIGKILL")
    report = audit.report()
    assert_nothing_lost(report)
    assert report["reconnects"] > 0, report  # its clients came back, to the other worker
    srv.wait_for(lambda s: {w["index"] for w in s["workers"] if "error" not in w} == {0, 1},
                 timeout=30, what="worker 1 restarted")


def test_a_rolling_restart_under_publishing_loses_nothing(workers, audits):
    srv = workers("--drain-seconds", "1")
    before = srv.workers()
    audit = audits(srv.url, "--subscribers", "120", "--rate", "400", "--for", "8")
    audit.wait_publishing()
    srv.signal_master(signal.SIGHUP)
    srv.wait_for_log("rolling restart done", timeout=60)
    report = audit.report()
    assert_nothing_lost(report)
    # every subscriber was on a worker that was replaced: each came back at least once
    assert report["reconnects"] >= 120, report
    assert not set(srv.workers().values()) & set(before.values())


def test_a_drained_server_replaced_by_a_new_one_loses_nothing_with_redis(
        redis_server, audits):
    """A deploy of a single process: SIGTERM drains it (its clients told to come back,
    spread out), a new process takes the port; history in Redis covers the gap."""
    port = free_port()
    args = ("--port", str(port), "--redis", redis_server.url, "--sse-retry", "300",
            "--drain-seconds", "1")
    srv = RealServer(*args).start()
    try:
        audit = audits(srv.url, "--subscribers", "120", "--rate", "400", "--for", "6")
        audit.wait_publishing()
        assert srv.terminate(timeout=30) == 0
        srv = RealServer(*args).start()
        report = audit.report()
    finally:
        srv.stop()
    assert_nothing_lost(report)
    assert report["reconnects"] >= 120 and report["ends"].get("stream ended", 0) >= 120, report


# -- a slow, lossy network -----------------------------------------------------------------


def test_streams_over_a_slow_lossy_link_lose_nothing(audits):
    """The server in a namespace of its own behind a shaped veth pair (tests/lossylink.py):
    the kernel drops packets (counted) and queues bursts; the streams carry on or resume,
    and every accepted message arrives once."""
    if os.environ.get("CI") == "true" and lossylink.missing_tools():
        pytest.fail(f"{lossylink.missing_tools()} but CI=true: .ci/run must install iproute2")
    why = lossylink.problem()
    if why:
        pytest.skip(why)
    key = secrets.token_urlsafe(24)  # the audit publishes from off loopback: a key it needs
    with lossylink.LossyLink() as link:
        srv = RealServer("--sse-retry", "300", host=link.server_address, prefix=link.prefix,
                         env={"COMET_PUBLISH_KEYS": key}).start()
        try:
            audit = audits(srv.url, "--subscribers", "40", "--rate", "200", "--size", "1000",
                           "--for", "8", "--settle", "60", env={publishkey.ENV: key})
            report = audit.report(timeout=240)
            dropped = link.dropped()
        finally:
            srv.stop()
    assert dropped > 0, f"the link dropped nothing ({link.shaping}): no fault was made"
    assert_nothing_lost(report)


# -- a draining server lets go of its keep-alive clients -------------------------------------


def test_while_draining_each_answer_closes_its_keep_alive_connection():
    """A publisher on a keep-alive connection to a worker that drains is told (Connection:
    close) to open its next connection elsewhere, rather than find this one closed under a
    request it cannot know the fate of; and once drained, a publish that would go nowhere
    is a 503, never a 200 or a 500."""
    settings = config.Settings(host="127.0.0.1", port=0)
    app = CometApp(settings)
    http = server.make_server(settings, app, server.listen("127.0.0.1", 0, 16))
    http.start()
    try:
        sock = gevent.socket.create_connection(http.address[:2], timeout=10)
        request = b"POST /send/u HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        sock.sendall(request)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
        assert app.shutdown() == 0  # nothing held: accepting stops at once
        sock.sendall(request)
        second = b""
        while data := sock.recv(4096):
            second += data
        # drained: the in-process broker is closed, so the message would go nowhere: a 503
        assert second.startswith(b"HTTP/1.1 503") and b"Connection: close" in second
        assert b"Retry-After" in second
    finally:
        http.stop()

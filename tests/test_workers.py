"""``--workers N``: the master, its workers on one port, the whole server's ``/stats``.

Real processes, no mocks, no timing assertions: every wait is on a condition with
a deadline. A server of several workers needs a broker that spans processes, so
the tests of the master at work run on a real ``redis-server`` of their own
(``redis_url``; skipped, or failed under ``CI=true``, without one); the refusal,
the settings and the pure parts (backoff, the sums) are tested directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import gevent
import pytest
import requests
import websocket

from comet import config, server
from comet.app import CometApp
from comet.hub import Hub
from comet.master import Backoff, death, reserve_port, spans_processes
from comet.siblings import fetch
from comet.stats import summed
from tests.chunked import open_stream
from tests.realserver import RealServer, free_port, post, wait_until
from tests.sse import open_events
from tests.workerservers import WorkersServer, alive, events_on_every_worker

# -- without a broker that spans processes -------------------------------------------


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_several_workers_without_a_spanning_broker_are_refused(how):
    args, env = (["--workers", "3"], {}) if how == "flag" else ([], {"COMET_WORKERS": "3"})
    done = subprocess.run([sys.executable, "-m", "comet.server", "--host", "127.0.0.1",
                           "--port", "0", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--workers 3 needs a broker that spans processes (--redis)" in done.stderr
    assert "serving on" not in done.stderr and "started worker" not in done.stderr


def test_workers_1_is_the_single_process_server():
    srv = RealServer("--workers", "1").start()
    try:
        assert "workers" not in srv.stats() and "comet.master" not in srv.log_text()
        assert srv.terminate() == 0
    finally:
        srv.stop()


def test_only_a_redis_setting_spans_processes():
    assert not spans_processes(config.load([], environ={}))
    assert not spans_processes(SimpleNamespace(redis=None))
    assert spans_processes(SimpleNamespace(redis="redis://127.0.0.1:6379/0"))


def test_workers_setting():
    assert config.load([], environ={}).workers == 1
    assert config.load([], environ={"COMET_WORKERS": "4"}).workers == 4
    assert config.load(["--workers", "3"], environ={"COMET_WORKERS": "4"}).workers == 3
    with pytest.raises(SystemExit, match="COMET_WORKERS"):
        config.load([], environ={"COMET_WORKERS": "0"})


# -- the pure parts ---------------------------------------------------------------------


def test_restart_backoff_doubles_to_ten_seconds_and_resets_after_a_healthy_life():
    backoff = Backoff()
    assert [backoff.delay(lived=1) for _ in range(10)] == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert backoff.delay(lived=30) == 0.1
    assert backoff.delay(lived=2) == 0.2


def test_a_death_in_words():
    assert death(0) == "exit status 0"
    assert death(1 << 8) == "exit status 1"
    assert death(signal.SIGKILL) == "killed by SIGKILL"
    assert death(signal.SIGRTMIN + 2) == f"killed by signal {signal.SIGRTMIN + 2}"


def snapshot(hub: Hub, **changes) -> dict:
    return {**hub.snapshot(), "pss_bytes": 1000, **changes}


def test_the_sum_adds_counts_and_leaves_out_what_is_per_process():
    hub = Hub(config.Settings())
    one = snapshot(hub, pid=11, connections={"total": 3, "test": 2, "ws": 1}, accepted=5,
                   messages={"in": 1, "out": 4, "dropped": 0}, ends={"client gone": 2},
                   rss_bytes=3000, rss_baseline_bytes=1000, index=0, accepting=True)
    two = snapshot(hub, pid=12, connections={"total": 1, "events": 1}, accepted=2,
                   messages={"in": 2, "out": 1, "dropped": 1},
                   ends={"answered": 1, "client gone": 1}, rss_bytes=2000,
                   rss_baseline_bytes=1000, index=1, accepting=False)
    total = summed([one, two])
    assert total["connections"] == {"total": 4, "test": 2, "ws": 1, "events": 1}
    assert total["accepted"] == 7 and total["messages"] == {"in": 3, "out": 5, "dropped": 1}
    assert total["ends"] == {"answered": 1, "client gone": 3}
    assert total["rss_bytes"] == 5000 and total["pss_bytes"] == 2000
    assert total["rss_per_connection"] == (5000 - 2000) // 4
    assert not {"pid", "uptime", "index", "accepting"} & total.keys()


def test_what_every_worker_agrees_on_is_kept_and_what_differs_is_left_to_the_entries():
    hub = Hub(config.Settings())
    one = snapshot(hub, broker={"kind": "redis", "up": True, "epoch": "a", "reconnects": 1})
    two = snapshot(hub, broker={"kind": "redis", "up": False, "epoch": "a", "reconnects": 2})
    assert summed([one, two])["broker"] == {"kind": "redis", "epoch": "a", "reconnects": 3}


def test_a_figure_one_worker_cannot_give_is_none_in_the_sum():
    hub = Hub(config.Settings())
    total = summed([snapshot(hub), snapshot(hub, pss_bytes=None)])
    assert total["pss_bytes"] is None and total["rss_per_connection"] is None


def test_a_sibling_that_does_not_answer_is_reported_not_waited_for(tmp_path):
    stuck_path = tmp_path / "w2-4343.sock"
    with socket.socket(socket.AF_UNIX) as stuck:  # listens, never answers
        stuck.bind(str(stuck_path))
        stuck.listen(1)
        with gevent.Timeout(5):
            got = fetch(stuck_path)
    assert got == {"index": 2, "pid": 4343, "error": "no answer within 1 s"}


def test_the_reserved_port_takes_no_connection_and_lets_workers_listen():
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError):  # bound, not listening: no accept queue
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(8)
            for _ in range(20):  # every connection reaches the listener, none the reservation
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    listener.accept()[0].close()
    finally:
        reserved.close()


def test_a_stopping_worker_answers_the_connections_queued_on_its_listener():
    """Closing a listener of a SO_REUSEPORT group resets what the kernel queued on it;
    taken first, those connections get an answer instead."""
    settings = config.Settings(host="127.0.0.1", port=0)
    app = CometApp(settings)
    listener = server.listen("127.0.0.1", 0, 16, reuse_port=True)
    http = server.make_server(settings, app, listener)
    http.start()
    port = listener.getsockname()[1]
    # This greenlet does not yield: the connections wait in the listener's queue.
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    for client in clients:
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    assert server.take_waiting(http) == 3
    server.drain(settings, app, http)
    for client in clients:
        with client:
            assert client.makefile("rb").readline().startswith(b"HTTP/1.1 ")


# -- a master at work (needs a broker that spans processes) --------------------------------


@pytest.fixture
def redis_url(redis_server) -> str:
    """A real redis-server of the test's own (tests/redisservers.py) for the workers' broker."""
    return redis_server.url


@pytest.fixture
def start_workers(redis_url):
    """Start masters with their workers; every process stopped by its pid after the test."""
    started = []

    def start(*args: str, workers: int = 2) -> WorkersServer:
        srv = WorkersServer("--redis", redis_url, "--interval", "0.2", *args,
                            workers=workers).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def holding(count: int):
    return lambda stats: stats["connections"]["total"] == count


def streams_on_every_worker(srv: WorkersServer, most: int = 64) -> list:
    """Open streams until every worker holds at least one (the kernel spreads them)."""
    streams = []
    while len(streams) < most:
        streams.append(open_stream(srv.port, f"/test/user{len(streams)}"))
        assert streams[-1].next_chunk().startswith(b"comet welcomes you!")
        held = srv.wait_for(holding(len(streams)), what="every stream counted")
        if all(w["connections"]["total"] > 0 for w in held["workers"]):
            return streams
    raise AssertionError(f"{most} streams did not reach every worker: {srv.stats()}")


def close_all(streams) -> None:
    for stream in streams:
        stream.close()


def test_every_worker_accepts_on_the_one_port(start_workers):
    srv = start_workers()
    streams = streams_on_every_worker(srv)
    try:
        stats = srv.stats()
        assert sorted(w["index"] for w in stats["workers"]) == [0, 1]
        assert len({w["pid"] for w in stats["workers"]} | {srv.master_pid}) == 3
        assert stats["pid"] == srv.master_pid
    finally:
        close_all(streams)


def test_stats_sums_are_the_sums_of_the_worker_entries(start_workers):
    srv = start_workers()
    streams = streams_on_every_worker(srv)
    try:
        post(srv, "/broadcast", b"to all")
        stats = srv.wait_for(lambda s: s["messages"]["out"] == len(streams),
                             what="the broadcast delivered on every worker")
        workers = stats["workers"]
        for key in ("accepted", "refused", "ids", "rss_bytes", "rss_baseline_bytes"):
            assert stats[key] == sum(w[key] for w in workers), key
        for key in ("total", "test"):
            assert stats["connections"][key] == sum(w["connections"][key] for w in workers)
        assert stats["messages"]["out"] == sum(w["messages"]["out"] for w in workers)
        assert stats["master"]["pid"] == srv.master_pid
    finally:
        close_all(streams)


def test_a_message_reaches_its_stream_whichever_worker_took_the_publish(start_workers):
    srv = start_workers()
    streams = streams_on_every_worker(srv)
    try:
        for number, stream in enumerate(streams):
            post(srv, f"/send/user{number}", f"for {number}".encode())
            got = stream.chunks_until(lambda c: c.startswith(b"Recvd msg"))
            assert got[-1] == f"Recvd msg: for {number}\n".encode()
    finally:
        close_all(streams)


def test_a_worker_that_cannot_start_stops_the_server_with_exit_status_1():
    srv = WorkersServer("--redis", f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(RuntimeError, match="server did not start"):
            srv.start()
        assert srv.proc.wait(30) == 1
        text = srv.log_text()
        assert "cannot reach Redis at redis://127.0.0.1" in text and "failed to start" in text
        assert not [pid for _, pid in srv.forked() if alive(pid)]
    finally:
        srv.stop()


def still_open(srv: WorkersServer, streams) -> int:
    """How many of ``streams`` get a broadcast sent now: the others end (after the ticks
    their dead worker sent before it died, which may still wait in their buffers)."""
    post(srv, "/broadcast", b"still there?")
    count = 0
    for stream in streams:
        try:
            stream.chunks_until(lambda c: c == b"Recvd msg: still there?\n", limit=10000)
        except (AssertionError, OSError):
            continue
        count += 1
    return count


def test_a_killed_worker_is_restarted_at_its_index_and_the_others_keep_their_streams(
        start_workers):
    srv = start_workers()
    streams = streams_on_every_worker(srv)
    try:
        before = {w["index"]: w for w in srv.stats()["workers"]}
        victim = before[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        line = srv.wait_for_log(f"worker 1 (pid {victim}) died: killed by SIGKILL")
        assert "restarting it in" in line
        stats = srv.wait_for(lambda s: {w["index"] for w in s["workers"]} == {0, 1}
                             and victim not in {w["pid"] for w in s["workers"]},
                             what="worker 1 back with a new pid")
        now = {w["index"]: w for w in stats["workers"]}
        assert now[0]["pid"] == before[0]["pid"]
        assert now[0]["connections"]["total"] == before[0]["connections"]["total"]
        assert (1, now[1]["pid"]) in srv.forked()
        assert still_open(srv, streams) == before[0]["connections"]["total"]
    finally:
        close_all(streams)


def test_sigterm_drains_every_worker_and_the_master_exits_0(start_workers):
    srv = start_workers("--shutdown-timeout", "5")
    streams = streams_on_every_worker(srv)
    pids = [pid for _, pid in srv.forked()]
    srv.signal_master(signal.SIGTERM)
    for stream in streams:
        got = stream.chunks_until(lambda c: c.startswith(b"Bye"))
        assert got[-1] == b"Bye: server shutting down\n" and stream.next_chunk() == b""
    assert srv.proc.wait(30) == 0
    assert not [pid for pid in pids if alive(pid)]
    close_all(streams)


def test_workers_of_a_master_killed_outright_drain_and_remove_the_run_directory(
        start_workers):
    srv = start_workers()
    rundir = Path(srv.wait_for_log("run directory ").split("run directory ")[1].split()[0])
    streams = streams_on_every_worker(srv)
    pids = [pid for _, pid in srv.forked()]
    srv.proc.kill()
    for stream in streams:
        got = stream.chunks_until(lambda c: c.startswith(b"Bye"))
        assert got[-1] == b"Bye: server shutting down\n" and stream.next_chunk() == b""
    close_all(streams)
    wait_until(lambda: not [pid for pid in pids if alive(pid)], what="every worker gone")
    wait_until(lambda: not rundir.exists(), what="the run directory removed")


def test_sighup_replaces_every_worker_one_at_a_time_and_no_connection_is_refused(
        start_workers):
    srv = start_workers()
    before = srv.workers()
    outcomes: Counter = Counter()
    rolling = threading.Event()
    rolling.set()

    def knock() -> None:
        while rolling.is_set():
            outcomes[_knock(srv.port)] += 1

    knocker = threading.Thread(target=knock, daemon=True)
    knocker.start()
    try:
        srv.wait_for_log("serving on")
        while sum(outcomes.values()) < 20:  # the client is at it before the roll begins
            time.sleep(0.01)
        srv.signal_master(signal.SIGHUP)
        srv.wait_for_log("rolling restart done", timeout=60)
        for index, pid in before.items():  # knocking on until every old listener is closed
            assert "exit status 0" in srv.wait_for_log(f"worker {index} (pid {pid}) stopped")
        after = srv.workers()
    finally:
        rolling.clear()
        knocker.join(30)
    assert set(after) == {0, 1} and not set(after.values()) & set(before.values())
    text = srv.log_text()
    assert text.index(f"worker 0 replaced: pid {after[0]} is accepting, pid {before[0]} stops") \
        < text.index(f"started worker 1: pid {after[1]} (rolling restart)")
    assert outcomes["refused"] == 0, outcomes
    assert set(outcomes) <= {"200", "503"}, outcomes


def _knock(port: int) -> str:
    """One new connection and one request: its status, or what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            head = sock.recv(64)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return type(exc).__name__
    return head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else repr(head)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_timeout(start_workers):
    srv = start_workers("--shutdown-timeout", "1")
    stuck = srv.workers()[1]
    os.kill(stuck, signal.SIGSTOP)  # stopped: SIGTERM stays pending, as for a blocked loop
    srv.signal_master(signal.SIGTERM)
    assert srv.proc.wait(30) == 0
    srv.wait_for_log(f"worker 1 (pid {stuck}) did not stop within")
    assert not alive(stuck)



# -- no sticky sessions: every transport, broadcasts, and a client whose worker died ----


def test_every_transport_gets_its_message_once_whichever_worker_holds_it(start_workers):
    srv = start_workers()
    events = events_on_every_worker(srv)
    sockets = [websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws/e{n}", timeout=10)
               for n in range(len(events))]
    polls = {}

    def poll(n: int) -> None:
        polls[n] = requests.get(f"{srv.url}/poll/e{n}", timeout=20).json()

    waiting = [threading.Thread(target=poll, args=(n,)) for n in range(len(events))]
    for thread in waiting:
        thread.start()
    srv.wait_for(lambda s: s["connections"].get("poll") == len(events)
                 and s["connections"].get("ws") == len(events), what="every subscriber held")
    try:
        sent = [post(srv, f"/send/e{n}", b"for %d" % n)["message"] for n in range(len(events))]
        every = post(srv, "/broadcast", b"to all")["message"]
        for n, stream in enumerate(events):
            got = [stream.next_message() for _ in range(2)]
            assert [(e.id, e.data) for e in got] == [(sent[n], f"for {n}"), (every, "to all")]
            assert [sockets[n].recv(), sockets[n].recv()] == [f"for {n}", "to all"]
        for thread in waiting:
            thread.join(20)
        assert {n: [m["id"] for m in answer["messages"]] for n, answer in polls.items()} == {
            n: [sent[n]] for n in range(len(events))}
        stats = srv.stats()
        # each SSE and WebSocket got two, each poll one: exactly once, nothing more
        assert stats["messages"]["out"] == 5 * len(events)
    finally:
        for stream in events:
            stream.close()
        for ws in sockets:
            ws.close()


def test_a_client_whose_worker_was_killed_resumes_on_a_worker_with_every_message_once(
        start_workers):
    srv = start_workers()
    events = events_on_every_worker(srv)
    try:
        first = [post(srv, f"/send/e{n}", b"first")["message"] for n in range(len(events))]
        for n, stream in enumerate(events):
            assert stream.next_message().id == first[n]
        victim = srv.stats()["workers"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        srv.wait_for_log(f"worker 1 (pid {victim['pid']}) died")
        # Accepted while the victim's clients are cut off: each must come once, in order.
        meanwhile = {n: [post(srv, f"/send/e{n}", b"m%d" % k)["message"] for k in range(3)]
                     for n in range(len(events))}
        for n, stream in enumerate(events):
            stream.close()
            resumed = open_events(srv.port, f"/events/e{n}", {"Last-Event-ID": first[n]})
            got = [resumed.next_message() for _ in range(3)]
            assert [e.id for e in got] == meanwhile[n], f"subscriber e{n}"
            later = post(srv, f"/send/e{n}", b"later")["message"]
            assert resumed.next_message().id == later  # and nothing twice before it
            resumed.close()
    finally:
        for stream in events:
            stream.close()


def test_two_masters_on_two_ports_are_one_server_through_their_redis(start_workers):
    """Two "machines": two masters of two workers each on one Redis. A message
    published to either reaches a subscriber of the other, and a subscriber resumes on
    the other machine with nothing lost and nothing twice."""
    one, two = start_workers(), start_workers()
    events = open_events(two.port, "/events/m")
    two.wait_for(lambda s: s["broker"]["subscribed_ids"] == 1, what="m subscribed on two")
    first = post(one, "/send/m", b"from one")["message"]
    assert events.next_message().id == first
    events.close()
    meanwhile = [post(two, "/send/m", b"while away %d" % n)["message"] for n in range(2)]
    every = post(two, "/broadcast", b"to all")["message"]
    resumed = open_events(one.port, "/events/m", {"Last-Event-ID": first})
    try:
        assert [resumed.next_message().id for _ in range(3)] == [*meanwhile, every]
        later = post(two, "/send/m", b"later")["message"]
        assert resumed.next_message().id == later
    finally:
        resumed.close()

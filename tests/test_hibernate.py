"""Hibernated connections (--hibernate on) against the real server, and the timer wheel alone."""

import json
import socket

import websocket

from comet.timerwheel import TimerWheel
from tests.chunked import StrictResponse, open_stream
from tests.realserver import RealServer, post, wait_until
from tests.sse import open_events


class Due:
    slot = None

    def __init__(self, wheel, times):
        self.wheel, self.times, self.fired = wheel, times, 0

    def on_timer(self):
        self.fired += 1
        if self.fired < self.times:
            self.wheel.schedule(self, 0.01)


def test_timer_wheel_fires_each_turn_and_ends_empty():
    wheel = TimerWheel(resolution=0.01)
    dues = [Due(wheel, 3) for _ in range(50)]
    for due in dues:
        wheel.schedule(due, 0.02)
    cancelled = Due(wheel, 1)
    wheel.schedule(cancelled, 0.02)
    wheel.cancel(cancelled)
    wait_until(lambda: wheel._runner is None, what="the wheel's runner ended")
    assert [d.fired for d in dues] == [3] * 50 and cancelled.fired == 0
    assert wheel._slots == {} and wheel._runner is None


def hibernating(*flags):
    return RealServer("--hibernate", "on", *flags).start()


def test_slow_reader_does_not_hold_up_the_others():
    server = hibernating("--interval", "60", "--queue-limit", "4", "--write-timeout", "600")
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /test/crowd HTTP/1.1\r\nHost: x\r\n\r\n")
        fast = open_stream(server.port, "/test/crowd")
        fast.next_chunk()
        server.wait_for(lambda s: s["connections"]["total"] == 2, what="two streams")
        big = b"z" * 60000
        for n in range(300):
            answer = post(server, "/send/crowd", big + b"%d" % n)
            got = fast.next_chunk()  # the fast reader keeps getting every message
            assert got.endswith(b"%d\n" % n)
            if answer["delivered"] == 1:
                break
        assert answer["delivered"] == 1, "the slow reader was never dropped"
        stats = server.wait_for(lambda s: s["connections"]["total"] == 1, what="drop")
        assert stats["slow_consumers"] == 1
        slow.close()
    finally:
        server.stop()


def test_broadcast_to_mixed_transports_arrives_exactly_once():
    server = hibernating("--interval", "60", "--heartbeat", "60", "--poll-timeout", "30")
    try:
        streams = [open_stream(server.port, f"/test/t{i}") for i in range(20)]
        events = [open_events(server.port, f"/events/e{i}") for i in range(20)]
        sockets = [websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/w{i}",
                                               timeout=10) for i in range(10)]
        polls = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
                 for _ in range(10)]
        for i, poll in enumerate(polls):
            poll.sendall(b"GET /poll/p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        for stream in streams:
            stream.next_chunk()
        for stream in events:
            stream.next_event()
        server.wait_for(lambda s: s["connections"]["total"] == 60, what="all connected")
        sent = post(server, "/broadcast", b"once")
        sent_after = post(server, "/broadcast", b"twice")
        assert sent["delivered"] == 60 and sent_after["delivered"] == 50  # polls answered
        for poll in polls:
            answer = StrictResponse(poll)
            assert json.loads(answer.next_chunk())["messages"][0]["data"] == "once"
        for stream in streams:
            assert [stream.next_chunk(), stream.next_chunk()] == [b"Recvd msg: once\n",
                                                                   b"Recvd msg: twice\n"]
        for stream in events:
            assert [stream.next_message().data for _ in range(2)] == ["once", "twice"]
        for ws in sockets:
            assert [ws.recv(), ws.recv()] == ["once", "twice"]
    finally:
        server.stop()


def test_router_and_timer_wheel_are_empty_after_clients_leave():
    server = hibernating("--interval", "0.1", "--heartbeat", "0.1")
    try:
        streams = [open_stream(server.port, f"/test/l{i}") for i in range(30)]
        events = [open_events(server.port, f"/events/m{i}") for i in range(30)]
        for stream in streams:
            stream.next_chunk()
        for stream in events:
            stream.next_event()
        stats = server.wait_for(lambda s: s["timers"] == 60, what="all on the wheel")
        assert stats["connections"]["total"] == 60 and stats["ids"] == 60
        for stream in streams:
            stream.close()
        for stream in events:
            stream.close()
        stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="all gone")
        assert stats["ids"] == 0 and stats["timers"] == 0
    finally:
        server.stop()


def test_client_that_closes_is_logged_out_at_its_next_tick():
    server = hibernating("--interval", "0.2")
    try:
        stream = open_stream(server.port, "/test/bye")
        stream.next_chunk()
        server.wait_for(lambda s: s["connections"]["total"] == 1, what="open")
        stream.close()  # FIN, no RST: found by the peek at the next tick
        stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="logout")
        assert stats["timers"] == 0
    finally:
        server.stop()


def test_waiting_poll_sleeps_then_its_connection_serves_the_next_request():
    server = hibernating("--poll-timeout", "30")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /poll/kp HTTP/1.1\r\nHost: x\r\n\r\n")
        stats = server.wait_for(lambda s: s["connections"].get("poll") == 1, what="waiting")
        assert stats["timers"] == 1  # on the wheel, no greenlet
        sent = post(server, "/send/kp", b"wake")
        first = StrictResponse(sock)
        assert first.status == 200
        assert first.chunks_until(lambda c: True)[-1].startswith(b'{"messages": [{"id": "')
        assert first.next_chunk() == b""
        sock.sendall(b"GET /poll/kp?since=" + sent["message"].encode() + b" HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")  # the same connection, kept alive
        post(server, "/send/kp", b"again")
        second = StrictResponse(sock, first.file)
        assert second.status == 200 and b'"data": "again"' in second.next_chunk()
        sock.close()
    finally:
        server.stop()


def test_shutdown_while_streams_sleep_ends_each_once():
    server = hibernating("--interval", "60", "--poll-timeout", "60")
    try:
        stream = open_stream(server.port, "/test/s")
        stream.next_chunk()
        poll = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        poll.sendall(b"GET /poll/s HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for(lambda s: s["connections"]["total"] == 2, what="both open")
        server.proc.send_signal(15)
        assert stream.chunks_until(lambda c: c.startswith(b"Bye"))[-1].startswith(b"Bye")
        assert stream.next_chunk() == b""
        answer = StrictResponse(poll)
        assert json.loads(answer.next_chunk())["messages"] == []
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_a_crowd_beyond_max_handshakes_waits_its_turn_and_every_login_is_served():
    """--max-handshakes 2: at most two requests in flight; the rest of a crowd of 40
    waits in the listen backlog (gevent stops accepting while the pool is full) and
    is served in turn, none refused or timed out."""
    import concurrent.futures
    srv = hibernating("--max-handshakes", "2")
    try:
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            crowd = list(pool.map(lambda n: open_events(srv.port, f"/events/c{n}"), range(40)))
        srv.wait_for(lambda s: s["connections"]["total"] == 40, what="all 40 held")
        post(srv, "/broadcast", b"to all")
        assert {events.next_message().data for events in crowd} == {"to all"}
        for events in crowd:
            events.close()
    finally:
        srv.stop()


def test_a_poll_answered_while_the_pool_is_full_serves_its_next_request():
    """The next request on an answered long-poll's connection is not queued behind the
    pool: the greenlet that answered it (here the publisher's own, which holds the
    pool's other slot) must not wait for a slot, or it would wait for itself."""
    srv = hibernating("--max-handshakes", "2", "--read-timeout", "30")
    poller = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    slow = None
    try:
        poller.sendall(b"GET /poll/p HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.wait_for(lambda s: s["connections"].get("poll") == 1, what="the poll asleep")
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow.sendall(b"GET /events/slow HTTP/1.1\r\n")  # holds a slot, unfinished
        srv.wait_for(lambda s: True, what="stats served in the other slot")
        post(srv, "/send/p", b"first")  # in the other slot; answers the poll
        first = StrictResponse(poller)
        assert json.loads(first.next_chunk())["messages"][0]["data"] == "first"
        assert first.next_chunk() == b""
        poller.sendall(b"GET /poll/p HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
        srv.wait_for(lambda s: s["connections"].get("poll") == 1, what="the next poll")
        post(srv, "/send/p", b"second")
        second = StrictResponse(poller, first.file)
        assert json.loads(second.next_chunk())["messages"][0]["data"] == "second"
    finally:
        poller.close()
        if slow is not None:
            slow.close()
        srv.stop()

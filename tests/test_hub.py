"""The hub and both lives in one process: real sockets (socketpair), no HTTP server.

What the end-to-end tests see through /stats, checked here at the source: who
counts what, what each life writes, and how each end is told.
"""

from __future__ import annotations

import socket
import struct

import gevent
import pytest
from gevent.socket import wait_read

from comet import config, ends, wire
from comet.broker.memory import MemoryBroker
from comet.framing import framing_for
from comet.hub import Hub, Outgoing, Refused
from comet.plain import PlainConnection, stream_life
from comet.response import StreamResponse, opening
from comet.sleeping import SleepingConnection, SleepingPoll, SleepingWebSocket
from tests.test_wsreader import frame


class RecordingBroker(MemoryBroker):
    """The in-process broker, remembering what the hub subscribed and unsubscribed."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed: list[list[str]] = []
        self.new: list[list[str]] = []
        self.unsubscribed: list[list[str]] = []

    def subscribe(self, ids, new):
        self.subscribed.append(list(ids))
        self.new.append(list(new))

    def unsubscribe(self, ids):
        self.unsubscribed.append(list(ids))


def make_hub(**settings) -> Hub:
    values = {"interval": 60.0, "heartbeat": 60.0, "poll_timeout": 60.0, "queue_limit": 4,
              **settings}
    return Hub(config.Settings(**values), RecordingBroker())


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What has arrived (at least one byte), without waiting for the peer to close."""
    wait_read(sock.fileno(), timeout=timeout)
    return sock.recv(1 << 16)


# -- the hub ------------------------------------------------------------------------------

def test_admit_refuses_at_capacity_and_counts_only_the_refusal():
    hub = make_hub(max_connections=1)
    hub.admit()
    conn = PlainConnection(hub, framing_for("test", hub.settings))
    hub.open(conn, ["a"])
    assert hub.room() == "at capacity (1 connections)"
    assert hub.counters.refused == 0, "room() only asks"
    with pytest.raises(Refused, match="at capacity") as refused:
        hub.admit()
    assert refused.value.retry_after > 0 and hub.counters.refused == 1
    hub.shutdown()
    assert hub.room() == "server is shutting down"


def test_the_broker_hears_of_every_login_and_of_an_id_at_its_last_logout():
    """subscribe() is told every login's ids (so that a second connection of an id
    whose subscription is still on its way also waits for it) and which are new
    here (the router's word: the broker keeps no copy); unsubscribe() only the ids
    left with no connection."""
    hub = make_hub()
    framing = framing_for("test", hub.settings)
    one, two = PlainConnection(hub, framing), PlainConnection(hub, framing)
    hub.open(one, ["a", "b"])
    hub.open(two, ["b", "c"])
    assert hub.broker.subscribed == [["a", "b"], ["b", "c"]]
    assert hub.broker.new == [["a", "b"], ["c"]]
    assert sorted(hub.router.held()) == ["a", "b", "c"]
    hub.close(one)
    hub.close(two)
    assert hub.broker.unsubscribed == [["a"], ["b", "c"]]
    assert hub.counters.held == 0 and hub.counters.ends == {"client gone": 2}


def test_a_slow_plain_connection_is_dropped_once_and_its_messages_counted_lost():
    hub = make_hub(queue_limit=2)
    conn = PlainConnection(hub, framing_for("test", hub.settings))
    hub.open(conn, ["u"])
    delivered = [hub.publish("u", b"%d" % n)[1] for n in range(4)]
    assert delivered == [1, 1, 0, 0]
    assert conn.ended is ends.SLOW_CONSUMER and conn.ids == ()
    c = hub.counters
    assert c.drops == {"slow consumer": 1}
    assert c.messages_dropped == 3  # the one refused and the two queued
    assert c.messages_in == 4 and c.messages_out == 2
    assert hub.snapshot()["slow_consumers"] == 1


def test_a_message_is_framed_once_per_transport_for_a_whole_fan_out():
    hub = make_hub()
    message = hub.broker.history.publish("x", b"data")
    out = Outgoing(message)
    sse = framing_for("events", hub.settings)
    first = out.framed(sse)
    assert out.framed(sse) is first
    assert first == wire.chunk(wire.sse_event(b"data", id=message.id))
    assert out.framed(framing_for("ws", hub.settings)) == wire.ws_text(b"data")


# -- the plain life -----------------------------------------------------------------------

def test_plain_stream_opens_replays_delivers_and_says_goodbye_at_shutdown():
    hub = make_hub()
    framing = framing_for("test", hub.settings)
    response = StreamResponse(hub, framing, ["u"])
    life = iter(response)
    assert next(life) == b"comet welcomes you! Your Id: u\n"
    hub.publish("u", b"hello")
    assert next(life) == b"Recvd msg: hello\n"
    hub.shutdown()
    assert next(life) == b"Bye: server shutting down\n"
    with pytest.raises(StopIteration):
        next(life)
    assert hub.counters.held == 0 and hub.counters.ends == {"server shutting down": 1}


def test_plain_life_closed_by_the_server_before_it_ends_is_closed_in_the_hub():
    hub = make_hub()
    conn = PlainConnection(hub, framing_for("events", hub.settings))
    life = stream_life(conn, lambda c: hub.open(c, ["u"]) or b"retry: 1\n\n")
    next(life)
    life.close()  # the server's write failed: pywsgi closes the body
    assert hub.counters.held == 0 and hub.router.ids == 0


def test_opening_puts_the_missed_notice_before_the_replay():
    hub = make_hub()
    sse = framing_for("events", hub.settings)
    kept = hub.publish("u", b"kept")[0]
    replay = hub.broker.replay(["u"], "old-epoch-3")
    first = opening(sse, "u", replay, "old-epoch-3")
    assert first.index(b"event: missed") < first.index(kept.id.encode())


# -- the sleeping life ----------------------------------------------------------------------

def sleeping_stream(hub: Hub, kind: str, cls=SleepingConnection, ids=("u",)):
    conn = cls(hub, framing_for(kind, hub.settings))
    hub.open(conn, list(ids))
    ours, theirs = socket.socketpair()
    return conn, ours, theirs


def test_a_sleeping_stream_queues_until_it_wakes_then_writes_straight_to_its_socket():
    hub = make_hub()
    conn, ours, theirs = sleeping_stream(hub, "test")
    hub.publish("u", b"early")  # before wake: behind the headers
    assert conn.pending
    conn.wake(ours)
    assert read_all(theirs) == wire.chunk(b"Recvd msg: early\n")
    hub.publish("u", b"late")
    assert read_all(theirs) == wire.chunk(b"Recvd msg: late\n")
    hub.shutdown()
    assert read_all(theirs) == wire.chunk(b"Bye: server shutting down\n") + wire.LAST_CHUNK
    assert hub.counters.ends == {"server shutting down": 1} and len(hub.wheel) == 0


def test_a_websocket_dropped_before_it_woke_counts_what_it_had_queued():
    hub = make_hub(queue_limit=10)
    conn, ours, theirs = sleeping_stream(hub, "ws", SleepingWebSocket)
    for n in range(3):
        hub.publish("u", b"%d" % n)
    hub.drop(conn, ends.SLOW_CONSUMER)
    assert hub.counters.messages_dropped == 3
    conn.wake(ours)  # the server hands the socket over late: closed at once
    assert theirs.recv(10) == b""


def test_a_sleeping_websocket_answers_a_ping_and_a_close_in_the_event_loop():
    hub = make_hub()
    conn, ours, theirs = sleeping_stream(hub, "ws", SleepingWebSocket)
    conn.wake(ours)
    theirs.sendall(frame(0x9, b"hb"))
    assert read_all(theirs) == wire.ws_frame(wire.WS_PONG, b"hb")
    assert conn.reader is None, "no reader is kept between messages"
    theirs.sendall(frame(0x8, struct.pack("!H", 1000)))
    assert read_all(theirs) == wire.ws_close(1000)
    gevent.sleep(0)
    assert conn.ended is ends.CLIENT_CLOSED and hub.counters.ends == {"client closed": 1}


@pytest.mark.parametrize("sent, code", [
    (frame(0x2, b"bin"), 1003), (frame(0x1, b"x", mask=False), 1002),
    (frame(0x1, length=100_000)[:14], 1009)])
def test_a_sleeping_websocket_closes_with_the_code_of_what_was_wrong(sent, code):
    hub = make_hub()
    conn, ours, theirs = sleeping_stream(hub, "ws", SleepingWebSocket)
    conn.wake(ours)
    theirs.sendall(sent)
    answer = read_all(theirs)
    assert answer[0] == 0x88 and struct.unpack("!H", answer[2:4])[0] == code


def test_shutdown_closes_a_sleeping_websocket_with_1012():
    hub = make_hub()
    conn, ours, theirs = sleeping_stream(hub, "ws", SleepingWebSocket)
    conn.wake(ours)
    hub.shutdown()
    assert read_all(theirs) == wire.ws_close(1012, "server shutting down")


def test_a_shutdown_tells_an_sse_client_to_come_back_after_a_jittered_retry():
    hub = make_hub(sse_retry=2000)
    conn, ours, theirs = sleeping_stream(hub, "events")
    conn.wake(ours)  # its head and opening went before, with the response's headers
    hub.shutdown()
    got = b""
    while not got.endswith(wire.LAST_CHUNK):
        got += read_all(theirs)
    retry = int(got.split(b"retry: ")[1].split(b"\n")[0])
    assert 1000 <= retry <= 3000 and hub.counters.ends == {"server shutting down": 1}


def test_jittered_retries_spread_over_half_to_one_and_a_half_times_the_setting():
    draws = {wire.jittered(2000) for _ in range(200)}
    assert min(draws) >= 1000 and max(draws) <= 3000 and len(draws) > 50


def test_a_shutdown_spreads_its_ends_in_slices_over_the_drain_and_ends_late_logins():
    hub = make_hub()
    framing = framing_for("events", hub.settings)
    conns = [PlainConnection(hub, framing) for _ in range(3000)]
    for i, conn in enumerate(conns):
        hub.open(conn, [f"u{i % 700}"])
    # 3,000 over 10 s is slower than DRAIN_FLOOR (1,000 a second): 3 s, 60 slices of 50
    draining = gevent.spawn(hub.shutdown, over=10.0)
    gevent.sleep(0)  # the first slice goes before the first pause
    assert sum(c.ended is not None for c in conns) == 50 and not hub.accepting
    late = PlainConnection(hub, framing)
    hub.open(late, ["late"])  # a login whose admission came before accepting stopped
    assert draining.get(timeout=30) == 3001
    assert all(c.ended is ends.SHUTDOWN for c in [*conns, late])
    assert hub.router.ids == 0


def test_a_shutdown_of_a_few_connections_ends_them_at_once_whatever_the_drain():
    hub = make_hub()
    framing = framing_for("events", hub.settings)
    conns = [PlainConnection(hub, framing) for _ in range(10)]
    for i, conn in enumerate(conns):
        hub.open(conn, [f"u{i}"])
    assert hub.shutdown(over=60.0) == 10  # returns without a pause: no greenlet needed
    assert all(c.ended is ends.SHUTDOWN for c in conns)


def test_a_sleeping_poll_is_answered_by_its_first_message_and_gives_the_socket_back():
    hub = make_hub()
    conn = SleepingPoll(hub, framing_for("poll", hub.settings), hub.position())
    hub.open(conn, ["u"])
    ours, theirs = socket.socketpair()
    given_back = []
    conn.wake(ours, given_back.append)
    message = hub.publish("u", b"news")[0]
    answer = read_all(theirs)
    assert answer == wire.chunk(wire.poll_answer([message], message.id)) + wire.LAST_CHUNK
    assert given_back == [ours], "the next request is read from the same socket"
    assert hub.counters.held == 0 and hub.counters.ends == {"answered": 1}
    assert hub.publish("u", b"again")[1] == 0

"""GET /events/<id>: Server-Sent Events, parsed strictly, resumed with Last-Event-ID."""

import json
import re
import signal
import socket

from tests.realserver import post
from tests.sse import open_events


def test_headers_and_retry_hint_arrive_at_once(start_server):
    server = start_server("--sse-retry", "1500")
    events = open_events(server.port, "/events/u")
    headers = events.response.headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert events.next_event().retry == 1500
    assert server.stats()["connections"]["events"] == 1


def test_every_event_has_an_id_and_multiline_data_splits(server):
    events = open_events(server.port, "/events/u")
    events.next_event()
    sent = post(server, "/send/u", b"line one\nline two\r\nline three")
    event = events.next_message()
    assert event.data == "line one\nline two\nline three"
    assert event.id == sent["message"]


def test_heartbeat_comments_keep_the_stream_alive(start_server):
    server = start_server("--heartbeat", "0.2")
    events = open_events(server.port, "/events/u")
    events.next_event()
    assert events.next_event().comments == ["heartbeat"]


def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(server):
    events = open_events(server.port, "/events/r")
    events.next_event()
    first = post(server, "/send/r", b"m1")
    assert events.next_message().id == first["message"]
    events.close()  # the server notices at its next write; the resume need not wait
    sent = [post(server, "/send/r", b"m%d" % n)["message"] for n in range(2, 6)]
    resumed = open_events(server.port, "/events/r", {"Last-Event-ID": first["message"]})
    resumed.next_event()  # retry hint
    got = [resumed.next_message() for _ in range(4)]
    assert [e.id for e in got] == sent and [e.data for e in got] == ["m2", "m3", "m4", "m5"]
    live = post(server, "/send/r", b"m6")
    assert resumed.next_message().id == live["message"]


def test_resume_by_query_parameter_for_polyfills(server):
    start = post(server, "/send/q", b"before")["message"]
    after = post(server, "/send/q", b"after")["message"]
    events = open_events(server.port, f"/events/q?last_event_id={start}")
    events.next_event()
    assert events.next_message().id == after


def test_message_sent_during_replay_is_neither_lost_nor_doubled(server):
    start = post(server, "/send/d", b"seed")["message"]
    for n in range(50):
        post(server, "/send/d", b"r%d" % n)
    events = open_events(server.port, "/events/d", {"Last-Event-ID": start})
    events.next_event()
    first = events.next_message()  # the replay has begun; send more while it runs
    post(server, "/send/d", b"during")
    got = [first] + [events.next_message() for _ in range(50)]
    assert [e.data for e in got] == [f"r{n}" for n in range(50)] + ["during"]
    assert len({e.id for e in got}) == 51


def test_missed_event_when_the_id_fell_out_of_history(start_server):
    server = start_server("--history", "3")
    start = post(server, "/send/m", b"0")["message"]
    for n in range(1, 6):
        post(server, "/send/m", b"%d" % n)
    events = open_events(server.port, "/events/m", {"Last-Event-ID": start})
    events.next_event()
    missed = events.next_message()
    assert missed.event == "missed"
    assert json.loads(missed.data)["last_event_id"] == start
    assert [events.next_message().data for _ in range(3)] == ["3", "4", "5"]


def test_missed_event_after_a_restart(server):
    events = open_events(server.port, "/events/x", {"Last-Event-ID": "deadbeef-12"})
    events.next_event()
    missed = events.next_message()
    assert missed.event == "missed"
    assert json.loads(missed.data) == {"last_event_id": "deadbeef-12", "resume_from": missed.id}
    live = post(server, "/send/x", b"new")
    assert events.next_message().id == live["message"]


def test_broadcast_reaches_sse_and_test_streams(server):
    events = open_events(server.port, "/events/a")
    events.next_event()
    server.wait_for(lambda s: s["connections"]["total"] == 1, what="stream open")
    sent = post(server, "/broadcast", b"to all")
    event = events.next_message()
    assert (event.data, event.id) == ("to all", sent["message"])


def test_after_a_restart_what_the_new_server_kept_follows_the_missed_event(server):
    kept = post(server, "/send/k", b"sent after the restart")["message"]
    events = open_events(server.port, "/events/k", {"Last-Event-ID": "0ld0ld00-40"})
    events.next_event()
    missed = events.next_message()
    assert missed.event == "missed" and missed.id.endswith("-0")
    replayed = events.next_message()
    assert (replayed.id, replayed.data) == (kept, "sent after the restart")


def test_a_message_that_is_not_utf8_arrives_as_text_with_bad_bytes_replaced(server):
    """An event stream is UTF-8 (WHATWG HTML 9.2.5), as a WebSocket text frame is: bytes
    that are not (a broadcast of b"to al\\x80", found by flood.fuzz) go out replaced, as
    on the other transports, and the stream goes on."""
    events = open_events(server.port, "/events/u8")
    events.next_event()
    post(server, "/send/u8", b"to al\x80 \xff\xfe")
    assert events.next_message().data == "to al\ufffd \ufffd\ufffd"
    post(server, "/send/u8", "caf\u00e9".encode())
    assert events.next_message().data == "caf\u00e9"


def test_sigterm_tells_every_stream_to_come_back_spread_over_the_drain(start_server):
    """1,200 streams, a 2 s drain: slower than the floor of 1,000 ends a second, so the
    ends go in slices (the log says how), each with a jittered retry: and its last chunk."""
    server = start_server("--sse-retry", "2000", "--drain-seconds", "2")
    socks = []
    for i in range(1200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(f"GET /events/d{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(sock)
    server.wait_for(lambda s: s["connections"].get("events") == 1200, timeout=60,
                    what="1,200 streams held")
    server.proc.send_signal(signal.SIGTERM)
    retries = []
    for sock in socks:
        got = b""
        while not got.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, f"stream ended without its last chunk: {got[-200:]!r}"
            got += data
        sock.close()
        retries.append([int(v) for v in re.findall(rb"retry: (\d+)\n", got)])
    assert all(r[0] == 2000 and len(r) == 2 and 1000 <= r[1] <= 3000 for r in retries)
    assert len({r[1] for r in retries}) > 100  # drawn, not one value for all
    assert server.proc.wait(30) == 0
    assert re.search(r"ending 1200 connections over 1\.\d+ s, \d+ every 0\.05 s",
                     server.log_text())

"""Framing as pure functions: message in, bytes out."""

import json

from comet import wire
from comet.broker import Message


def msg(data: bytes, seq: int = 7) -> Message:
    return Message("ep0ch", seq, data)


def test_test_stream_lines_follow_the_seed():
    assert wire.test_welcome("foo") == b"comet welcomes you! Your Id: foo\n"
    assert wire.test_tick(3, "foo") == b"Chunk 3 for id foo\n"
    assert wire.test_message(msg(b"hi there")) == b"Recvd msg: hi there\n"
    assert wire.test_farewell("server shutting down") == b"Bye: server shutting down\n"


def test_sse_event_has_id_and_one_data_line_per_line():
    assert wire.sse_event(b"one", id="e-1") == b"id: e-1\ndata: one\n\n"
    assert (wire.sse_event(b"a\nb\r\nc\rd", id="e-2")
            == b"id: e-2\ndata: a\ndata: b\ndata: c\ndata: d\n\n")
    assert wire.sse_event(b"", id="e-3") == b"id: e-3\ndata: \n\n"


def test_sse_named_event_and_retry_and_heartbeat():
    assert wire.sse_event(b"x", event="missed") == b"event: missed\ndata: x\n\n"
    assert wire.sse_retry(2000) == b"retry: 2000\n\n"
    assert wire.SSE_HEARTBEAT.startswith(b":") and wire.SSE_HEARTBEAT.endswith(b"\n\n")


def test_sse_missed_event_resumes_from_the_position():
    frame = wire.sse_missed("ep0ch-9", "old-3")
    head, data = frame.split(b"data: ")
    assert head == b"event: missed\nid: ep0ch-9\n"
    assert json.loads(data) == {"last_event_id": "old-3", "resume_from": "ep0ch-9"}


def test_poll_answer_is_json_with_text_data():
    answer = json.loads(wire.poll_answer([msg(b"caf\xc3\xa9"), msg(b"\xff", 8)], "ep0ch-8"))
    assert answer == {"messages": [{"id": "ep0ch-7", "data": "café"},
                                   {"id": "ep0ch-8", "data": "\ufffd"}], "last": "ep0ch-8"}
    assert json.loads(wire.poll_answer([], "ep0ch-0", missed=True))["missed"] is True

"""Framing as pure functions: message in, bytes out."""

import json
import struct

import pytest

from comet import wire
from comet.broker import Message


def msg(data: bytes, seq: int = 7) -> Message:
    return Message("ep0ch", seq, data)


def test_test_stream_lines_follow_the_seed():
    assert wire.test_welcome("foo") == b"comet welcomes you! Your Id: foo\n"
    assert wire.test_tick(3, "foo") == b"Chunk 3 for id foo\n"
    assert wire.test_message(msg(b"hi there")) == b"Recvd msg: hi there\n"
    assert wire.test_farewell("server shutting down") == b"Bye: server shutting down\n"


def test_sse_event_data_is_utf8_with_bad_bytes_replaced():
    assert wire.sse_event(b"a\x80b") == "data: a\ufffdb\n\n".encode()
    assert wire.sse_event("caf\u00e9".encode()) == "data: caf\u00e9\n\n".encode()


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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_ws_frames_are_final_unmasked_and_sized_as_rfc_6455_says(size):
    from geventwebsocket.websocket import Header  # the encoder wire.py replaced
    payload = b"p" * size
    made = wire.ws_frame(wire.WS_TEXT, payload)
    assert made == bytes(Header.encode_header(True, wire.WS_TEXT, b"", size, 0)) + payload
    assert made[0] == 0x81 and not made[1] & 0x80


def test_ws_close_carries_the_code_and_a_short_reason():
    frame = wire.ws_close(1008, "slow consumer" * 20)
    assert frame[:2] == b"\x88\x7a"  # final close frame, 2 + 120 bytes
    assert struct.unpack("!H", frame[2:4])[0] == 1008 and len(frame) == 2 + 122


@pytest.mark.parametrize("code, answered", [
    (None, 1000), (1000, 1000), (1001, 1001), (4000, 4000),
    (999, 1002), (1005, 1002), (1006, 1002), (5000, 1002)])
def test_a_client_close_is_answered_with_its_code_or_1002_for_one_it_may_not_send(code, answered):
    assert struct.unpack("!H", wire.ws_close_reply(code)[2:4])[0] == answered

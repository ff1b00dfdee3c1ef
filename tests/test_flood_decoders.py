"""The flood's SSE, WebSocket and long-poll decoders, fed bytes in every split, no socket."""

from __future__ import annotations

import json
import struct

import pytest

from flood.chunked import DecodeError
from flood.poll import PollDecoder
from flood.sse import SseDecoder
from flood.ws import WsDecoder, accept_for, client_frame


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def feed_split(decoder, data: bytes, size: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), size):
        out += decoder.feed(data[i:i + size])
    return out


# -- SSE ------------------------------------------------------------------------

SSE_BODY = (chunk(b"retry: 2000\n\n") + chunk(b": heartbeat\n\n")
            + chunk(b"id: e-1\ndata: one\n\n") + chunk(b"id: e-2\ndata: two\r\ndata: lines\r\n\r\n")
            + chunk(b"event: missed\nid: e-3\rdata:no space\r\r") + chunk(b": heartbeat\n\n")
            + chunk(b"data: split ") + chunk(b"over chunks\n") + chunk(b"\n"))


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(SSE_BODY)])
def test_sse_counts_events_with_data_only_whatever_the_split(size):
    events = feed_split(SseDecoder(), SSE_BODY, size)
    assert events == [b"one", b"two\nlines", b"no space", b"split over chunks"]


WHOLE_EVENTS = [b"id: e-1\ndata: one\n\n", b"data: two\ndata: lines\n\nid: x\n\n",
                b": heartbeat\ndata\n\n", b"data:no space\nevent: e\ndatum: no\n\n",
                b"retry: 10\n\ndata: a\n\ndata: b\n\n", b"data: caf\xc3\xa9\n\n",
                b"datafoo: no\ndata:  two spaces\ndata\n\n"]


@pytest.mark.parametrize("piece", WHOLE_EVENTS)
def test_sse_whole_events_in_one_chunk_read_as_line_by_line(piece):
    """The fast path (whole events, LF only) gives what the line-by-line path gives."""
    whole = SseDecoder().feed(chunk(piece))
    assert whole  # every piece above carries at least one message
    for cut in range(1, len(piece)):  # in two chunks: the first ends mid-event, line by line
        decoder = SseDecoder()
        assert decoder.feed(chunk(piece[:cut]) + chunk(piece[cut:])) == whole, cut


def test_sse_crlf_split_between_chunks_is_one_line_end():
    decoder = SseDecoder()
    assert decoder.feed(chunk(b"data: a\r")) == []
    assert decoder.feed(chunk(b"\n\r\n")) == [b"a"]


def test_sse_refuses_lines_that_are_not_utf8_and_chunking_errors():
    with pytest.raises(DecodeError, match="not UTF-8"):
        SseDecoder().feed(chunk(b"data: \xff\n\n"))
    with pytest.raises(DecodeError, match="malformed chunk size"):
        SseDecoder().feed(b"zz\r\n")


def test_sse_cut_mid_event_is_mid_chunk():
    decoder = SseDecoder()
    decoder.feed(chunk(b"data: half"))
    assert decoder.mid_chunk and not decoder.done


# -- WebSocket --------------------------------------------------------------------

def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes((0x80 * fin | opcode, size))
    elif size < 65536:
        head = bytes((0x80 * fin | opcode, 126)) + struct.pack("!H", size)
    else:
        head = bytes((0x80 * fin | opcode, 127)) + struct.pack("!Q", size)
    return head + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    assert frame[1] & 0x80, "client frames must be masked"
    size, mask = frame[1] & 0x7F, frame[2:6]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:6 + size]))


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_ws_text_fragmented_and_long_messages_whatever_the_split(size):
    big = b"x" * 70000
    data = (server_frame(0x1, "héllo".encode()) + server_frame(0x1, b"fra", fin=False)
            + server_frame(0x9, b"p") + server_frame(0x0, b"gment") + server_frame(0x1, big)
            + server_frame(0x1, b"y" * 300))
    decoder = WsDecoder()
    assert feed_split(decoder, data, size) == ["héllo".encode(), b"fragment", big, b"y" * 300]
    assert unmask(decoder.take_replies()) == (0xA, b"p")  # the pong, inside the fragmented one


def test_ws_ping_gets_a_masked_pong_and_close_a_close_reply():
    decoder = WsDecoder()
    assert decoder.feed(server_frame(0x9, b"hi")) == []
    assert unmask(decoder.take_replies()) == (0xA, b"hi")
    assert decoder.take_replies() == b""
    decoder.feed(server_frame(0x8, struct.pack("!H", 1001) + b"bye"))
    assert decoder.done and decoder.end_reason == "websocket close 1001"
    assert unmask(decoder.take_replies()) == (0x8, struct.pack("!H", 1001))


@pytest.mark.parametrize("data, reason", [
    (bytes((0x81, 0x81)) + b"mask" + b"x", "masked frame"),
    (bytes((0xC1, 1)) + b"x", "reserved bits"),
    (bytes((0x81, 126)) + struct.pack("!H", 5) + b"hello", "shortest form"),
    (server_frame(0x9, b"x", fin=False), "control frame"),
    (server_frame(0x0, b"x"), "continuation frame without"),
    (server_frame(0x3, b"x"), "unknown opcode"),
    (server_frame(0x1, b"\xff"), "not UTF-8"),
    (server_frame(0x8, struct.pack("!H", 999)), "invalid close code"),
])
def test_ws_protocol_violations_close_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        WsDecoder().feed(data)


def test_ws_accept_and_client_frames():
    # RFC 6455 section 1.3's example
    assert accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert unmask(client_frame(0xA, b"abc")) == (0xA, b"abc")


# -- long-poll --------------------------------------------------------------------

REQUEST = b"GET /poll/7?id=team HTTP/1.1\r\nHost: h\r\n\r\n"


def answer(messages: list[str], last: str, chunked: bool = True) -> bytes:
    body = json.dumps({"messages": [{"id": f"m{i}", "data": d} for i, d in enumerate(messages)],
                       "last": last}).encode()
    if chunked:
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(body)
                + b"0\r\n\r\n")
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("size", [1, 5, 10000])
def test_poll_answers_give_messages_and_the_next_request_asks_since_last(size):
    decoder = PollDecoder(REQUEST)
    assert feed_split(decoder, answer(["a", "b"], "ep-2"), size) == [b"a", b"b"]
    assert decoder.take_replies() == b"GET /poll/7?id=team&since=ep-2 HTTP/1.1\r\nHost: h\r\n\r\n"
    assert not decoder.mid_chunk
    assert feed_split(decoder, answer([], "ep-2", chunked=False), size) == []
    assert decoder.take_replies().startswith(b"GET /poll/7?id=team&since=ep-2 ")


def test_poll_a_since_in_the_url_is_replaced_by_last():
    decoder = PollDecoder(b"GET /poll/7?since=old HTTP/1.1\r\n\r\n")
    decoder.feed(answer([], "e f"))
    assert decoder.take_replies() == b"GET /poll/7?since=e%20f HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("data, reason", [
    (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "status 503"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope", "not the expected JSON"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "neither chunked"),
])
def test_poll_bad_answers_close_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        PollDecoder(REQUEST).feed(data)

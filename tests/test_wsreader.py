"""The WebSocket frame reader alone: bytes in, events out, no socket (the h11 way)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comet import wsreader
from comet.wsreader import Close, FrameReader, Message, MessageTooBig, Ping, Pong, ProtocolError


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
          rsv: int = 0, length: int | None = None) -> bytes:
    """A client frame; ``length`` overrides the announced length (for lying headers)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def events(data: bytes, limit: int = wsreader.MAX_CLIENT_MESSAGE) -> list:
    reader = FrameReader(limit)
    reader.feed(data)
    found = []
    while (event := reader.next_event()) is not None:
        found.append(event)
    return found


def test_ping_pong_and_close_with_and_without_a_code():
    data = (frame(wsreader.PING, b"hi") + frame(wsreader.PONG)
            + frame(wsreader.CLOSE, struct.pack("!H", 1001) + b"bye") + frame(wsreader.CLOSE))
    assert events(data) == [Ping(b"hi"), Pong(), Close(1001), Close(None)]


def test_text_and_binary_messages_are_told_apart_and_their_data_is_not_kept():
    assert events(frame(wsreader.TEXT, b"x" * 300) + frame(wsreader.BINARY, b"\0")) == [
        Message(True), Message(False)]


def test_a_fragmented_message_with_a_ping_inside_is_one_message():
    data = (frame(wsreader.TEXT, b"ab", fin=False) + frame(wsreader.PING, b"p")
            + frame(wsreader.CONTINUATION, b"cd", fin=False)
            + frame(wsreader.CONTINUATION, b"ef"))
    assert events(data) == [Ping(b"p"), Message(True)]


def test_fed_byte_by_byte_it_finds_the_same_events():
    data = frame(wsreader.TEXT, b"x" * 200) + frame(wsreader.PING, b"ping") + frame(wsreader.CLOSE)
    reader, found = FrameReader(), []
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        while (event := reader.next_event()) is not None:
            found.append(event)
    assert found == [Message(True), Ping(b"ping"), Close(None)]
    assert reader.idle


def test_a_message_over_the_limit_is_refused_from_its_header_before_its_payload():
    reader = FrameReader(limit=4096)
    reader.feed(frame(wsreader.TEXT, length=10_000)[:8])  # the header and mask only
    with pytest.raises(MessageTooBig, match="client message over 4096 bytes"):
        reader.next_event()


def test_fragments_that_add_up_past_the_limit_are_refused():
    data = frame(wsreader.TEXT, b"x" * 3000, fin=False) + frame(wsreader.CONTINUATION, b"y" * 2000)
    with pytest.raises(MessageTooBig):
        events(data)


@pytest.mark.parametrize("data, why", [
    (frame(wsreader.TEXT, b"x", mask=False), "unmasked"),
    (frame(wsreader.TEXT, b"x", rsv=0x40), "reserved bits"),
    (frame(wsreader.PING, b"x" * 126), "over 125"),
    (frame(wsreader.PING, b"x", fin=False), "fragmented"),
    (frame(0xB), "unknown control opcode 11"),
    (frame(0x3), "unknown data opcode 3"),
    (frame(wsreader.CONTINUATION, b"x"), "continuation frame with no message"),
    (frame(wsreader.TEXT, b"a", fin=False) + frame(wsreader.TEXT, b"b"), "a new message"),
    (frame(wsreader.CLOSE, b"\x03"), "one-byte payload"),
])
def test_broken_frames_are_protocol_errors(data, why):
    with pytest.raises(ProtocolError, match=why):
        events(data)


def test_the_buffer_is_bounded_even_when_nobody_drains_it():
    reader = FrameReader(limit=100)
    with pytest.raises(MessageTooBig):
        for _ in range(100):
            reader.feed(b"\x81" * wsreader.READ_CHUNK)


def test_idle_only_between_messages():
    reader = FrameReader()
    reader.feed(frame(wsreader.TEXT, b"a", fin=False))
    assert reader.next_event() is None and not reader.idle
    reader.feed(frame(wsreader.CONTINUATION, b"b"))
    assert reader.next_event() == Message(True) and reader.idle


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=40))
def test_any_bytes_in_any_pieces_give_events_or_a_clear_refusal(data, cuts):
    """Whatever a client sends, the reader answers with events, or one of its two errors."""
    reader, at = FrameReader(limit=256), 0
    try:
        for size in [*cuts, len(data)]:
            reader.feed(data[at:at + size])
            at += size
            while reader.next_event() is not None:
                pass
    except (ProtocolError, MessageTooBig):
        return
    assert len(reader._buffer) <= wsreader.MAX_HEADER + 256 + wsreader.READ_CHUNK


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["ping", "text", "close"]), min_size=1, max_size=8),
       st.integers(1, 9))
def test_a_valid_sequence_split_anywhere_gives_the_same_events(kinds, step):
    made = {"ping": (frame(wsreader.PING, b"pp"), Ping(b"pp")),
            "text": (frame(wsreader.TEXT, b"t" * 50), Message(True)),
            "close": (frame(wsreader.CLOSE, struct.pack("!H", 1000)), Close(1000))}
    data = b"".join(made[k][0] for k in kinds)
    reader, found = FrameReader(), []
    for at in range(0, len(data), step):
        reader.feed(data[at:at + step])
        while (event := reader.next_event()) is not None:
            found.append(event)
    assert found == [made[k][1] for k in kinds]

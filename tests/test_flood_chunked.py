"""flood.chunked and flood.head: strict decoding, fed byte by byte and whole, no sockets."""

from __future__ import annotations

import socket

import pytest

from flood import head
from flood.chunked import MAX_LINE, MAX_PAYLOAD, ChunkedDecoder, ChunkError

BODY = b"5\r\nhello\r\n7;name=val;flag\r\n, world\r\n000\r\nX-Trailer: yes\r\n\r\n"


def feed_all(data: bytes, step: int | None = None) -> tuple[ChunkedDecoder, list[bytes]]:
    dec = ChunkedDecoder()
    out: list[bytes] = []
    step = step or len(data)
    for i in range(0, len(data), step):
        out += dec.feed(data[i:i + step])
    return dec, out


@pytest.mark.parametrize("step", [1, 2, 3, 7, None])
def test_chunks_come_out_whole_however_the_bytes_are_split(step):
    dec, out = feed_all(BODY, step)
    assert out == [b"hello", b", world"]
    assert dec.done


PLAIN = b"".join(b"%x\r\n%s\r\n" % (len(d), d)
                 for d in (b"a", b"bc" * 40, b"x" * (MAX_PAYLOAD + 5), b"last")) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 5, 60, None])
def test_whole_chunks_read_at_once_as_split_ones(step):
    """What the fast path takes (whole chunks with no extension) it reads as the state
    machine does, the over-long chunk cut to MAX_PAYLOAD included."""
    dec, out = feed_all(PLAIN, step)
    assert out == [b"a", b"bc" * 40, b"x" * MAX_PAYLOAD, b"last"]
    assert dec.done


def test_whole_chunk_without_its_crlf_is_an_error():
    with pytest.raises(ChunkError, match="not followed by CRLF"):
        ChunkedDecoder().feed(b"1\r\nab\r\n")


def test_last_chunk_is_not_counted_and_ends_the_body():
    dec, out = feed_all(b"0\r\n\r\n")
    assert out == [] and dec.done


def test_bytes_after_the_end_are_ignored():
    dec, out = feed_all(b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert out == [b"a"] and dec.done


def test_hex_sizes_are_case_insensitive():
    _, out = feed_all(b"A\r\n0123456789\r\nb\r\n0123456789a\r\n")
    assert out == [b"0123456789", b"0123456789a"]


def test_quoted_extension_values_are_accepted():
    _, out = feed_all(b'3 ; a="x;y\\"z" ; b\r\nabc\r\n')
    assert out == [b"abc"]


def test_stream_in_progress_reports_mid_chunk():
    dec, out = feed_all(b"3\r\nabc\r\n10\r\nonly")
    assert out == [b"abc"] and dec.mid_chunk and not dec.done
    assert not feed_all(b"3\r\nabc\r\n")[0].mid_chunk


@pytest.mark.parametrize("body, reason", [
    (b"zz\r\n", "malformed chunk size"),
    (b" 5\r\nhello\r\n", "malformed chunk size"),
    (b"0x5\r\nhello\r\n", "malformed chunk size"),
    (b"-5\r\nhello\r\n", "malformed chunk size"),
    (b"5 junk\r\nhello\r\n", "malformed chunk size or extension"),
    (b"5;\r\nhello\r\n", "malformed chunk size or extension"),
    (b"5\nhello\r\n", "bare LF"),
    (b"5\r\nhelloX\r\n", "not followed by CRLF"),
    (b"5\r\nhello\n", "not followed by CRLF"),
    (b"11111111111111111\r\n", "too large"),
    (b"0\r\nnot a field\r\n\r\n", "malformed trailer"),
    (b"1" * (MAX_LINE + 10), "too long"),
])
def test_malformed_framing_is_an_error_with_a_reason(body, reason):
    for step in (1, None):
        with pytest.raises(ChunkError, match=reason):
            feed_all(body, step)


def test_head_parse_and_stream_check():
    raw, rest = head.split_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                b"Content-Type: text/html\r\n\r\n5\r\nhello")
    assert rest == b"5\r\nhello"
    parsed = head.parse_head(raw)
    assert parsed.status == 200 and parsed.headers[b"content-type"] == b"text/html"
    head.check_stream(parsed)


def test_head_waits_for_the_blank_line():
    assert head.split_head(b"HTTP/1.1 200 OK\r\nTransfer-") is None


@pytest.mark.parametrize("raw, reason", [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0", "status 404"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5", "not chunked"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip", "not chunked"),
    (b"ICY 200 OK", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here", "bad header line"),
])
def test_heads_that_cannot_start_a_stream_say_why(raw, reason):
    with pytest.raises(head.HeadError, match=reason):
        head.check_stream(head.parse_head(raw))


def test_request_names_host_and_port():
    req = head.request("127.0.0.1", 8001, "/test/1?id=a")
    assert req.startswith(b"GET /test/1?id=a HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n")
    assert req.endswith(b"\r\n\r\n")


def test_a_head_read_off_a_socket_in_pieces_comes_with_what_followed_it():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        for piece in (b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r", b"\n5\r\nhello"):
            theirs.sendall(piece)
        answer, rest = head.read_head(ours.recv)
        assert answer.status == 200 and answer.headers[b"transfer-encoding"] == b"chunked"
        assert rest.startswith(b"5\r\n")
        theirs.sendall(b"HTTP/1.1 200 OK\r\n")
        theirs.shutdown(socket.SHUT_WR)
        assert head.read_head(ours.recv) is None  # closed before the blank line

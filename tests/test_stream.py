"""GET /test/<id> against the real server, read with a strict chunked parser."""

import socket
import struct

import requests

from tests.chunked import open_stream
from tests.realserver import post


def test_welcome_then_ticks_in_valid_chunks(server):
    stream = open_stream(server.port, "/test/foo")
    assert stream.status == 200
    assert stream.headers["transfer-encoding"] == "chunked"
    assert stream.headers["content-type"] == "text/html; charset=utf-8"
    assert stream.next_chunk() == b"comet welcomes you! Your Id: foo\n"
    assert stream.next_chunk() == b"Chunk 1 for id foo\n"
    assert stream.next_chunk() == b"Chunk 2 for id foo\n"


def test_message_arrives_on_its_stream_and_only_there(server):
    mine, other = open_stream(server.port, "/test/me"), open_stream(server.port, "/test/other")
    mine.next_chunk(), other.next_chunk()
    server.wait_for(lambda s: s["connections"]["total"] == 2, what="two streams")
    answer = post(server, "/send/me", b"hello me")
    assert answer["delivered"] == 1
    got = mine.chunks_until(lambda c: c.startswith(b"Recvd"))
    assert got[-1] == b"Recvd msg: hello me\n"
    # the other stream sees only ticks until well after the message
    seen = other.chunks_until(lambda c: c == b"Chunk 3 for id other\n")
    assert not any(c.startswith(b"Recvd") for c in seen)


def test_several_ids_on_one_connection(server):
    stream = open_stream(server.port, "/test/main?id=alt&id=third")
    stream.next_chunk()
    server.wait_for(lambda s: s["ids"] == 3, what="three ids logged in")
    assert post(server, "/send/alt", b"to alt")["delivered"] == 1
    assert post(server, "/send/third", b"to third")["delivered"] == 1
    got = stream.chunks_until(lambda c: c == b"Recvd msg: to third\n")
    assert b"Recvd msg: to alt\n" in got


def test_two_connections_on_one_id(server):
    first, second = open_stream(server.port, "/test/twin"), open_stream(server.port, "/test/twin")
    first.next_chunk(), second.next_chunk()
    server.wait_for(lambda s: s["connections"]["total"] == 2, what="two streams")
    assert post(server, "/send/twin", b"both")["delivered"] == 2
    for stream in (first, second):
        assert stream.chunks_until(lambda c: c.startswith(b"Recvd"))[-1] == b"Recvd msg: both\n"


def test_broadcast_reaches_every_stream(server):
    streams = [open_stream(server.port, f"/test/b{i}") for i in range(5)]
    for stream in streams:
        stream.next_chunk()
    server.wait_for(lambda s: s["connections"]["total"] == 5, what="five streams")
    assert post(server, "/broadcast", b"all")["delivered"] == 5
    for stream in streams:
        assert stream.chunks_until(lambda c: c.startswith(b"Recvd"))[-1] == b"Recvd msg: all\n"


def test_abrupt_disconnect_logs_out(server):
    stream = open_stream(server.port, "/test/gone")
    stream.next_chunk()
    server.wait_for(lambda s: s["connections"]["total"] == 1, what="one stream")
    # RST instead of FIN: the client vanishes without a goodbye
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="logout")
    assert stats["ids"] == 0


def unread_stream(server, id: str) -> socket.socket:
    """A /test/ stream whose client reads nothing (a small receive buffer): its
    server-side writes soon block."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /test/%s HTTP/1.1\r\nHost: x\r\n\r\n" % id.encode())
    server.wait_for(lambda s: s["connections"]["total"] == 1, what="stream open")
    return sock


def test_slow_reader_is_dropped_not_buffered(start_server):
    server = start_server("--interval", "60", "--queue-limit", "4", "--write-timeout", "600")
    sock = unread_stream(server, "slow")
    big = b"x" * 60000
    delivered = []
    for _ in range(200):  # the client reads nothing: kernel buffers fill, then the queue
        delivered.append(post(server, "/send/slow", big)["delivered"])
        if delivered[-1] == 0:
            break
    assert delivered[-1] == 0, "the slow reader was never dropped"
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="drop")
    assert stats["slow_consumers"] == 1 and stats["messages"]["dropped"] >= 5, stats
    server.wait_for_log("dropping slow consumer slow")
    sock.close()


def test_a_write_blocked_past_the_write_timeout_drops_the_reader_in_both_lives(start_server):
    server = start_server("--interval", "60", "--queue-limit", "1000", "--write-timeout", "1")
    sock = unread_stream(server, "stuck")
    big = b"x" * 60000
    for _ in range(100):  # the client reads nothing: the kernel's buffers fill, then writes block
        if post(server, "/send/stuck", big)["delivered"] == 0:
            break
        if server.stats()["drops"]:
            break
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="the drop")
    assert stats["drops"] == {"write timed out": 1}, stats
    assert stats["slow_consumers"] == 0, "a write timeout is not a full queue"
    assert stats["ends"] == {"write timed out": 1}, stats
    sock.close()


def test_head_answers_headers_only(server):
    answer = requests.head(server.url + "/test/foo", timeout=10)
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert server.stats()["accepted"] == 0


def test_at_capacity_new_streams_get_503(start_server):
    server = start_server("--max-connections", "2")
    held = [open_stream(server.port, f"/test/c{i}") for i in range(2)]
    for stream in held:
        stream.next_chunk()
    refused = requests.get(server.url + "/test/c3", timeout=10)
    assert refused.status_code == 503 and "at capacity" in refused.text
    assert refused.headers["Retry-After"] == "5"
    assert server.stats()["refused"] == 1


def test_sigterm_ends_streams_cleanly_and_exits_0(server):
    stream = open_stream(server.port, "/test/bye")
    stream.next_chunk()
    server.wait_for(lambda s: s["connections"]["total"] == 1, what="one stream")
    server.proc.send_signal(15)
    got = stream.chunks_until(lambda c: c.startswith(b"Bye"))
    assert got[-1] == b"Bye: server shutting down\n"
    assert stream.next_chunk() == b""  # the zero-length last chunk
    assert server.proc.wait(15) == 0
    server.wait_for_log("stopped")

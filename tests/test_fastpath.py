"""The fast path (``--fast-path``): POST and DELETE answered on httptools, the rest on pywsgi.

Two real servers, one with the fast path and one without, are sent the same
bytes over raw sockets; their answers must be the same (status, headers but
``Date``, body), for the requests the fast path answers and for the ones it
hands to pywsgi. Then what only the fast path does: keep-alive and pipelining,
a GET after a POST on one connection (the bytes replayed to pywsgi, a stream
that then hibernates and is delivered to), a head or body in pieces, an idle
connection closed after --read-timeout, and keep-alive publishers that wait
between requests without holding the server's --max-handshakes slots.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.realserver import RealServer, post

ARGS = ("--read-timeout", "2", "--max-message", "1000", "--interval", "60")
EPOCH = re.compile(rb'"[0-9a-f]{6,}-(\d+)"')  # a message id's epoch differs between servers


@pytest.fixture(scope="module")
def servers():
    fast = RealServer("--fast-path", "on", *ARGS).start()
    plain = RealServer("--fast-path", "off", *ARGS).start()
    yield fast, plain
    fast.stop()
    plain.stop()


def connect(server: RealServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(reader) -> tuple[bytes, list[bytes], bytes] | None:
    """One answer from ``reader`` (a socket's file): status line, header lines, body;
    None when the server closed first. A 100 Continue is read past."""
    status = reader.readline()
    if not status:
        return None
    headers = []
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        headers.append(line.rstrip(b"\r\n"))
    if status.split()[1] == b"100":
        return read_answer(reader)
    fields = {h.split(b":", 1)[0].lower(): h.split(b":", 1)[1].strip() for h in headers}
    body = reader.read(int(fields.get(b"content-length", b"0")))
    return status.rstrip(b"\r\n"), headers, body


def exchange(server: RealServer, *pieces: bytes, answers: int = 1, pause: float = 0.0):
    """Send ``pieces`` (``pause`` s apart) on one connection and read ``answers`` answers;
    then whether the server closed the connection after them."""
    with connect(server) as sock:
        reader = sock.makefile("rb")
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        got = [read_answer(reader) for _ in range(answers)]
        try:  # kept alive: a next request is answered; closed: EOF or a reset
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            closed = read_answer(reader) is None
        except OSError:
            closed = True
    return got, closed


def comparable(answer) -> tuple:
    if answer is None:
        return None
    status, headers, body = answer
    return (status, sorted(h for h in headers if not h.lower().startswith(b"date:")),
            EPOCH.sub(rb'"epoch-\1"', body))


def request(method: bytes, target: bytes, body: bytes | None = b"hi",
            headers: tuple[bytes, ...] = (), version: bytes = b"HTTP/1.1") -> bytes:
    head = [method + b" " + target + b" " + version, b"Host: 127.0.0.1", *headers]
    if body is not None:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")


CASES = {
    "send": request(b"POST", b"/send/a"),
    "send to an escaped id": request(b"POST", b"/send/a%20b"),
    "empty message": request(b"POST", b"/send/a", b""),
    "no Content-Length": request(b"POST", b"/send/a", None),
    "over --max-message": request(b"POST", b"/send/a", b"x" * 1001),
    # the head only: the server refuses on the declared length (a body it does not
    # read would make its close a reset)
    "over the fast path's bound": request(b"POST", b"/send/a", None,
                                          (b"Content-Length: %d" % (300 * 1024),)),
    "batch": request(b"POST", b"/send",
                     b'{"id": "a", "message": "m"}\n{"id": "b", "message": "n"}\n',
                     (b"Content-Type: application/x-ndjson",)),
    "bad batch": request(b"POST", b"/send", b"{nope\n", (b"Content-Type: application/x-ndjson",)),
    "broadcast": request(b"POST", b"/broadcast"),
    "follow": request(b"POST", b"/subscribe/a?to=b", b""),
    "unfollow": request(b"DELETE", b"/subscribe/a?to=b", None),
    "notify": request(b"POST", b"/notify/b"),
    "POST where only GET is": request(b"POST", b"/stats"),
    "no such path": request(b"POST", b"/nowhere"),
    "asks to close": request(b"POST", b"/send/a", headers=(b"Connection: close",)),
    "HTTP/1.0": request(b"POST", b"/send/a", version=b"HTTP/1.0"),
    "chunked body": b"POST /send/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nhi\r\n0\r\n\r\n",
    "Expect: 100-continue": request(b"POST", b"/send/a", headers=(b"Expect: 100-continue",)),
    "bad Content-Length": b"POST /send/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2x\r\n\r\nhi",
    "header line without a colon": b"POST /send/a HTTP/1.1\r\nHost: x\r\nno colon\r\n"
                                   b"Content-Length: 2\r\n\r\nhi",
    "bare LF line ends": b"POST /send/a HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi",
    "absolute-form target": request(b"POST", b"http://127.0.0.1/send/a"),
    "underscore header": request(b"POST", b"/send/a", headers=(b"Content_Type: text/x",)),
    # llhttp stops at an upgrade with an exception of its own (found by flood.fuzz)
    "asks to upgrade": request(b"POST", b"/send/a",
                               headers=(b"Connection: Upgrade", b"Upgrade: websocket")),
}


@pytest.mark.parametrize("case", CASES)
def test_same_answer_with_and_without_the_fast_path(servers, case):
    fast, plain = servers
    got_fast, closed_fast = exchange(fast, CASES[case])
    got_plain, closed_plain = exchange(plain, CASES[case])
    assert comparable(got_fast[0]) == comparable(got_plain[0])
    assert got_fast[0] is not None and not got_fast[0][0].split()[1].startswith(b"5")
    assert closed_fast == closed_plain


def test_keep_alive_and_pipelined_requests_are_answered_in_order(servers):
    fast, _ = servers
    burst = b"".join(request(b"POST", b"/send/k%d" % i, b"m%d" % i) for i in range(20))
    got, closed = exchange(fast, burst, request(b"POST", b"/send/last"), answers=21)
    ids = [re.search(rb'"id": "([^"]+)"', body).group(1) for _, _, body in got]
    assert ids == [b"k%d" % i for i in range(20)] + [b"last"]
    assert all(status == b"HTTP/1.1 200 OK" for status, _, _ in got)
    assert not closed


def test_a_get_after_posts_on_one_connection_reaches_pywsgi(servers):
    fast, _ = servers
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    pieces = (request(b"POST", b"/send/g") + get,  # pipelined: the GET's bytes replayed
              request(b"POST", b"/send/g2"), get)  # then the connection is pywsgi's
    got, _ = exchange(fast, *pieces, answers=4, pause=0.05)
    assert [answer[0].split()[1] for answer in got] == [b"200"] * 4
    assert b'"id": "g2"' in got[2][2]


def test_a_stream_opened_after_a_post_is_delivered_to(servers):
    fast, _ = servers
    with connect(fast) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request(b"POST", b"/send/s", b"before"))
        assert read_answer(reader)[0] == b"HTTP/1.1 200 OK"
        sock.sendall(b"GET /events/s HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        fast.wait_for(lambda s: s["connections"]["total"] >= 1, what="the stream logged in")
        assert post(fast, "/send/s", b"after-the-post")["delivered"] == 1
        seen = b""
        while b"after-the-post" not in seen:
            seen += sock.recv(4096)


def test_a_head_in_pieces_is_answered(servers):
    fast, _ = servers
    whole = request(b"POST", b"/send/p", b"pieces")
    got, _ = exchange(fast, whole[:2], whole[2:20], whole[20:], pause=0.05)
    assert got[0][0] == b"HTTP/1.1 200 OK" and b'"id": "p"' in got[0][2]


def test_a_body_in_pieces_is_answered_on_the_fast_path(servers):
    fast, _ = servers
    body = b"y" * 900
    whole = request(b"POST", b"/send/b", body)
    got, _ = exchange(fast, whole[:-600], whole[-600:-10], whole[-10:], pause=0.05)
    assert got[0][0] == b"HTTP/1.1 200 OK" and b'"id": "b"' in got[0][2]


def test_an_idle_connection_is_closed_after_the_read_timeout(servers):
    fast, _ = servers
    with connect(fast) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request(b"POST", b"/send/i"))
        assert read_answer(reader)[0] == b"HTTP/1.1 200 OK"
        assert reader.read(1) == b""  # closed by the server after --read-timeout 2
    fast.wait_for_log("no request within 2 s")


def test_nothing_in_either_log_is_a_traceback(servers):
    for server in servers:
        assert "Traceback" not in server.log_text()


def test_keep_alive_publishers_waiting_between_requests_do_not_block_new_connections():
    """--max-handshakes bounds the requests worked on, not the keep-alive connections
    that wait for their next one: with room for 2, five idle publishers leave a new
    subscriber room, and each publisher's next request on its own connection is
    answered. (Held in the pool, the third publisher would wait in the listen backlog
    until --read-timeout closed one of the first two.)"""
    server = RealServer("--max-handshakes", "2", "--read-timeout", "60",
                        "--interval", "60").start()
    try:
        publishers = [connect(server) for _ in range(5)]
        readers = [sock.makefile("rb") for sock in publishers]
        for sock, reader in zip(publishers, readers, strict=True):
            sock.sendall(request(b"POST", b"/send/a"))
            assert read_answer(reader)[0] == b"HTTP/1.1 200 OK"
        with connect(server) as stream:
            stream.sendall(b"GET /events/a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
        for sock, reader in zip(publishers, readers, strict=True):
            sock.sendall(request(b"POST", b"/send/a"))
            assert read_answer(reader)[0] == b"HTTP/1.1 200 OK"
            sock.close()
    finally:
        server.stop()

"""flood.publisher: msggen's keep-alive POST client, against real sockets.

A small gevent server on 127.0.0.1 answers each request with bytes the test
chooses (Content-Length, chunked, framed by the close, malformed); the comet
server itself is the peer in tests/test_flood_msggen.py.
"""

from __future__ import annotations

import pytest
from gevent.server import StreamServer

from flood.publisher import HeadError, Publisher


class Answering:
    """Reads one request head and body at a time and writes the next canned answer."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock, _address) -> None:
        self.connections += 1
        buf = b""
        while self.answers:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buf) < length:
                buf += sock.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + buf[:length])
            buf = buf[length:]
            answer = self.answers.pop(0)
            if answer == b"CLOSE":
                sock.close()
                return
            sock.sendall(answer)
            if b"Connection: close" in answer or b"Content-Length" not in answer \
                    and b"chunked" not in answer:
                sock.close()
                return

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def answering(request):
    servers = []

    def make(*answers: bytes) -> Answering:
        server = Answering(list(answers))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": "1"}'


def test_posts_go_on_one_kept_connection_with_their_bodies(answering):
    server = answering(OK, OK, OK)
    pub = Publisher("127.0.0.1", server.port)
    for n in range(3):
        assert pub.post(f"/send/{n}", f"message {n}".encode()) == (200, b'{"ok": "1"}')
    assert server.connections == 1
    assert server.requests[2].startswith(b"POST /send/2 HTTP/1.1\r\n")
    assert server.requests[2].endswith(b"\r\n\r\nmessage 2")
    pub.close()


def test_a_content_type_is_sent_when_given(answering):
    server = answering(OK)
    Publisher("127.0.0.1", server.port).post("/send", b"{}\n", b"application/x-ndjson")
    assert b"\r\nContent-Type: application/x-ndjson\r\n" in server.requests[0]


def test_chunked_and_close_framed_answers_are_read_whole(answering):
    chunked = (b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nno \r\n2\r\nid\r\n0\r\n\r\n")
    closed = b"HTTP/1.0 503 Service Unavailable\r\n\r\nRedis is down"
    server = answering(chunked, closed)
    pub = Publisher("127.0.0.1", server.port)
    assert pub.post("/send/a", b"x") == (404, b"no id")
    assert pub.post("/send/a", b"x") == (503, b"Redis is down")
    assert server.connections == 1


def test_a_connection_close_answer_opens_a_new_connection_for_the_next(answering):
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = answering(closing, OK)
    pub = Publisher("127.0.0.1", server.port)
    assert pub.post("/send/a", b"x") == (200, b"ok")
    assert pub.post("/send/a", b"x")[0] == 200
    assert server.connections == 2


def test_a_malformed_answer_raises_and_the_next_post_reconnects(answering):
    server = answering(b"HTTP/1.1 two hundred\r\n\r\n", OK)
    pub = Publisher("127.0.0.1", server.port)
    with pytest.raises(HeadError):
        pub.post("/send/a", b"x")
    assert pub.post("/send/a", b"x")[0] == 200
    assert server.connections == 2


def test_a_server_that_closes_before_answering_is_a_connection_error(answering):
    server = answering(b"CLOSE")
    with pytest.raises(ConnectionError):
        Publisher("127.0.0.1", server.port).post("/send/a", b"x")


def test_an_answer_longer_than_the_bound_is_refused(answering):
    server = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")
    with pytest.raises(HeadError, match="99999999"):
        Publisher("127.0.0.1", server.port).post("/send/a", b"x")

"""Bad requests get a clear 4xx (or a closed connection), a log line, and leave nothing behind.

The data-driven cases are files in tests/requests/invalid/: the name starts
with the status the request must get; the file's LF line ends are sent as CRLF.
"""

import pathlib
import re
import socket
import struct

import pytest
import requests

from tests.chunked import StrictResponse
from tests.realserver import post, wait_until

INVALID = sorted((pathlib.Path(__file__).parent / "requests" / "invalid").glob("*.http"))


@pytest.fixture(scope="module")
def shared_server():
    from tests.realserver import RealServer
    srv = RealServer("--interval", "0.2", "--read-timeout", "1").start()
    yield srv
    srv.stop()


def raw_exchange(port: int, data: bytes) -> StrictResponse:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return StrictResponse(sock)


def send_invalid(port: int, path: pathlib.Path) -> StrictResponse:
    """One request file, its LF line ends sent as CRLF; the answer's head is read."""
    return raw_exchange(port, path.read_bytes().replace(b"\n", b"\r\n"))


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Error" not in text.split("\n")[0]


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_request_gets_its_status(shared_server, path):
    expected = int(path.name[:3])
    answer = send_invalid(shared_server.port, path)
    assert answer.status == expected, answer.status_line
    body = answer.file.read(int(answer.headers.get("content-length", 0))).decode()
    no_traceback(body)
    answer.close()


def test_every_invalid_request_was_logged_without_traceback(shared_server):
    start = len(shared_server.lines)  # this test's requests only, whatever ran before
    for path in INVALID:
        send_invalid(shared_server.port, path).close()

    def logged() -> list[str]:
        return [line for line in shared_server.lines[start:] if re.search(r": 4\d\d ", line)]
    wait_until(lambda: len(logged()) >= len(INVALID), what="a log line per invalid request")
    assert "Traceback" not in "\n".join(shared_server.lines[start:])


def test_request_line_too_long_gets_414(shared_server):
    answer = raw_exchange(shared_server.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert answer.status == 414


def first_status_line(port: int, request: bytes) -> bytes:
    """The status line the server answers ``request`` with; b"" if it just closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(request)
        return sock.makefile("rb").readline()
    except ConnectionError:
        return b""
    finally:
        sock.close()


def test_huge_headers_are_refused(shared_server):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 200) for i in range(400))
    status_line = first_status_line(shared_server.port,
                                    b"GET /stats HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_line == b"" or status_line.split()[1] in (b"400", b"431")


def test_more_than_100_headers_get_400_and_a_log_line_not_a_traceback(shared_server):
    start = len(shared_server.lines)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(150))
    status_line = first_status_line(shared_server.port,
                                    b"GET /stats HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_line.split()[1] == b"400"
    # A refusal for a limit is logged once per burst: at once, or (when another of its
    # kind came within the window) as the last of the burst's summary line.
    wait_until(lambda: any("more than 100 headers" in line
                           for line in shared_server.lines[start:]), timeout=15,
               what="the 400's log line")
    assert shared_server.stats()["limits"]["refused"]["request head too large"] >= 1
    assert "Traceback" not in "\n".join(shared_server.lines[start:])


def test_single_enormous_header_is_refused(shared_server):
    status_line = first_status_line(
        shared_server.port, b"GET /stats HTTP/1.1\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n")
    assert status_line == b"" or status_line.split()[1] in (b"400", b"431")


def test_body_longer_than_content_length(shared_server):
    answer = raw_exchange(shared_server.port,
                          b"POST /send/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
                          b"abcGARBAGE AFTER THE BODY\r\n\r\n")
    assert answer.status == 200  # the 3 bytes are a message; the rest is a bad next request
    answer.file.read(int(answer.headers["content-length"]))
    second = StrictResponse(answer.sock, answer.file)
    assert second.status == 400
    answer.close()


def test_message_over_the_limit_gets_413(shared_server):
    answer = requests.post(shared_server.url + "/send/a", data=b"x" * 65537, timeout=10)
    assert answer.status_code == 413 and "limit" in answer.text


def test_slow_body_gets_408_and_the_connection_closes(shared_server):
    sock = socket.create_connection(("127.0.0.1", shared_server.port), timeout=10)
    sock.sendall(b"POST /send/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    answer = StrictResponse(sock)  # the server gives up after --read-timeout 1
    assert answer.status == 408
    answer.file.read(int(answer.headers["content-length"]))
    assert answer.file.read() == b""  # closed by the server
    answer.close()
    shared_server.wait_for_log("body not received")


def test_slow_request_line_is_closed_and_logged(shared_server):
    sock = socket.create_connection(("127.0.0.1", shared_server.port), timeout=10)
    sock.sendall(b"GET /sta")
    assert sock.recv(100) == b""  # closed once --read-timeout passes
    sock.close()
    shared_server.wait_for_log("no request within")


def test_server_is_healthy_and_empty_after_bad_input(shared_server):
    for path in INVALID:
        send_invalid(shared_server.port, path).close()
    assert requests.get(shared_server.url + "/health", timeout=10).status_code == 200
    shared_server.wait_for(lambda s: s["connections"]["total"] == 0 and s["ids"] == 0,
                           what="no connection or id left behind")


@pytest.mark.parametrize("offset", ["\N{SUPERSCRIPT TWO}", "9" * 5000],
                         ids=["superscript-digit", "5000-digits"])
def test_a_position_whose_offset_is_no_number_is_garbage_not_a_500(server, offset):
    """``str.isdigit`` takes "²" (byte 0xB2 of a latin-1 header) and ``int`` refuses it,
    as it refuses over 4,300 digits: such a ``Last-Event-ID`` or ``since`` is no position
    (a client that saw nothing, told it missed), never a 500."""
    epoch = post(server, "/send/pos")["message"].rpartition("-")[0]
    position = f"{epoch}-{offset}"
    header = b"GET /events/pos HTTP/1.1\r\nHost: x\r\nLast-Event-ID: %s\r\n\r\n"
    answer = raw_exchange(server.port, header % position.encode("latin-1"))
    assert answer.status == 200
    answer.close()
    polled = requests.get(server.url + "/poll/pos", params={"since": position}, timeout=10)
    assert polled.status_code == 200 and polled.json()["messages"]
    assert "Traceback" not in server.log_text()


def test_headers_that_stop_coming_get_408_and_a_log_line_not_a_traceback(shared_server):
    start = len(shared_server.lines)
    sock = socket.create_connection(("127.0.0.1", shared_server.port), timeout=10)
    sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Half: ")
    answer = StrictResponse(sock)  # after --read-timeout 1
    assert answer.status == 408
    assert answer.file.read() == b""  # closed by the server
    answer.close()
    shared_server.wait_for_log("headers not received")
    assert "Traceback" not in "\n".join(shared_server.lines[start:])


@pytest.mark.parametrize("path", ["/", "/stats", "/test/a", "/events/a", "/dashboard"])
def test_clients_that_reset_before_their_answer_leave_no_traceback(start_server, path):
    """Each asks, then resets at once or a moment later (SO_LINGER 0): the answer meets
    a reset or a broken pipe, which is the client's leaving, not a server error."""
    server = start_server("--interval", "0.05", "--heartbeat", "0.2")  # dead streams: next write
    for n in range(10):
        sock = socket.socket()
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if n % 2:
            first_status_line(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    server.wait_for(lambda s: s["connections"]["total"] == 0, what="every client gone")
    assert "Traceback" not in server.log_text() and "Error" not in server.log_text()


@pytest.mark.parametrize("head", [b"GARBAGE\r\n\r\n", b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Half"],
                         ids=["refused-request-line", "half-sent-headers"])
def test_a_client_that_resets_mid_head_is_gone_not_a_traceback(start_server, head):
    """Its 400 meets a broken pipe, or its headers a reset: the fuzzer found both as
    tracebacks (pywsgi prints what is not a ValueError, and its 400's write is unguarded)."""
    server = start_server()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(head)
        sock.close()
    assert first_status_line(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: sum("400 from" in line or "left" in line for line in server.lines) >= 20,
               what="a line for each client")
    assert "Traceback" not in server.log_text()

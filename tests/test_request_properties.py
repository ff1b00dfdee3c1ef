"""Property tests of the request line and headers, through the real server.

Whatever bytes a client sends as its head, the server's first answer is a
well-formed HTTP status line with a 1xx, 2xx or 4xx status (101 for a handshake
that happens to be right), or it closes the connection cleanly; never a 5xx,
never a traceback in its log. The heads are made by hypothesis from the parts a
request has (method, target, version, fields), each either one a client
plausibly sends or arbitrary bytes.
"""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.realserver import RealServer

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")

METHODS = st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE",
                                     b"OPTIONS", b"get", b""]), st.binary(max_size=12))
PATHS = st.sampled_from([b"/", b"/test/a", b"/events/a", b"/poll/a", b"/ws/a", b"/send/a",
                         b"/send", b"/broadcast", b"/stats", b"/health", b"*", b"",
                         b"http://x/test/a"])
TARGETS = st.one_of(PATHS, st.tuples(PATHS, st.binary(max_size=40)).map(b"".join),
                    st.tuples(PATHS, st.just(b"?"), st.binary(max_size=40)).map(b"".join))
VERSIONS = st.one_of(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2",
                                      b"HTTP/1", b"HTTP/", b"HTTP/1.1x", b"http/1.1", b""]),
                     st.binary(max_size=10))
NAMES = st.one_of(st.sampled_from([b"Host", b"Upgrade", b"Connection", b"Last-Event-ID",
                                   b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
                                   b"Authorization", b"Cookie", b"Origin", b"Expect",
                                   b"Content-Type", b"X-API-Key"]),
                  st.binary(max_size=16))
#: a body-framing field makes the server wait for a body: --read-timeout per example
NO_BODY = re.compile(rb"(?i)content-length|transfer-encoding")
FIELDS = st.lists(st.tuples(NAMES, st.binary(max_size=60)), max_size=6).map(
    lambda fields: [(n, v) for n, v in fields if not NO_BODY.search(n + b":" + v)])
SEPARATORS = st.sampled_from([b" ", b"  ", b"\t", b""])


@pytest.fixture(scope="module", params=["on", "off"], ids=["hibernate", "plain"])
def head_server(request):
    srv = RealServer("--hibernate", request.param, "--read-timeout", "1",
                     "--poll-timeout", "0.2", "--interval", "5").start()
    yield srv
    srv.stop()


def first_answer(port: int, head: bytes) -> bytes:
    """The bytes up to the first status line's end, or what came before the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(head)
            got = b""
            while b"\r\n" not in got and len(got) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                got += data
        except ConnectionResetError:  # refused and closed before reading all we sent
            return b""
    return got


@settings(max_examples=150, deadline=None)
@given(METHODS, SEPARATORS, TARGETS, SEPARATORS, VERSIONS, FIELDS)
def test_any_request_head_gets_a_status_below_500_or_a_clean_close(
        head_server, method, sep1, target, sep2, version, fields):
    head = (method + sep1 + target + sep2 + version + b"\r\n"
            + b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n")
    got = first_answer(head_server.port, head)
    if got:
        match = STATUS_LINE.match(got)
        assert match, f"not a status line: {got[:120]!r} for {head!r}"
        assert int(match.group(1)) < 500, f"{match.group(0)!r} for {head!r}"


def test_nothing_in_the_log_is_a_traceback(head_server):
    """Run after the property test on the same server (pytest keeps file order)."""
    assert "Traceback" not in head_server.log_text()

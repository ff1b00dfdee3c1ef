"""A malformed WebSocket handshake to /ws/<id> gets a 4xx with its reason, never a 500.

Raw requests over a raw socket to the real server: each case changes one thing
of a valid handshake, and must get 400 (426 for a well-formed version that is
not supported, RFC 6455 4.2.2), a one-line plain-text reason, the connection
closed, and an INFO line with that reason in the log, never a traceback.
"""

from __future__ import annotations

import base64
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chunked import StrictResponse
from tests.realserver import RealServer

KEY = base64.b64encode(b"sixteen byte key").decode()

HANDSHAKE = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}


def handshake(changes: dict | None = None, method: str = "GET",
              version: str = "HTTP/1.1") -> bytes:
    """The valid handshake with ``changes`` (a value of None drops that header)."""
    headers = {**HANDSHAKE, **(changes or {})}
    lines = [f"{method} /ws/h {version}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
    if method == "POST":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(port: int, request: bytes) -> tuple[StrictResponse, bytes]:
    """Send ``request``; the response's head and body, the socket left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    answer = StrictResponse(sock)
    length = 0 if answer.status == 101 else int(answer.headers.get("content-length", 0))
    return answer, answer.file.read(length)


def wait_for_log(server: RealServer, text: str, timeout: float = 10.0) -> None:
    """Wait (no timing assertion) until the server's output holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{server.log_text()}"
        time.sleep(0.05)


def case(changes: dict | None, status: int, words: str, *, id: str, **request):
    return pytest.param(handshake(changes, **request), status, words, id=id)


HUGE_KEY = base64.b64encode(b"k" * 6000).decode()

CASES = [
    case({"Upgrade": None}, 400, "Upgrade", id="upgrade-missing"),
    case({"Upgrade": ""}, 400, "Upgrade", id="upgrade-empty"),
    case({"Upgrade": "h2c"}, 400, "Upgrade", id="upgrade-wrong"),
    case({"Upgrade": "websocket" * 1000}, 400, "Upgrade", id="upgrade-oversized"),
    case({"Connection": None}, 400, "Connection", id="connection-missing"),
    case({"Connection": ""}, 400, "Connection", id="connection-empty"),
    case({"Connection": "keep-alive"}, 400, "Connection", id="connection-wrong"),
    case({"Connection": "keep-alive, " * 700}, 400, "Connection", id="connection-oversized"),
    case({"Sec-WebSocket-Version": None}, 400, "Sec-WebSocket-Version", id="version-missing"),
    case({"Sec-WebSocket-Version": ""}, 400, "Sec-WebSocket-Version", id="version-empty"),
    case({"Sec-WebSocket-Version": "thirteen"}, 400, "Sec-WebSocket-Version",
         id="version-garbage"),
    case({"Sec-WebSocket-Version": "13, 8"}, 400, "Sec-WebSocket-Version", id="version-list"),
    case({"Sec-WebSocket-Version": "1" * 5000}, 400, "Sec-WebSocket-Version",
         id="version-oversized"),
    case({"Sec-WebSocket-Version": "12"}, 426, "13, 8, 7", id="version-unsupported"),
    case({"Sec-WebSocket-Version": "255"}, 426, "13, 8, 7", id="version-unsupported-highest"),
    case({"Sec-WebSocket-Key": None}, 400, "Sec-WebSocket-Key", id="key-missing"),
    case({"Sec-WebSocket-Key": ""}, 400, "Sec-WebSocket-Key", id="key-empty"),
    case({"Sec-WebSocket-Key": "not base64 at all!!!!!!!"}, 400, "Sec-WebSocket-Key",
         id="key-not-base64"),
    case({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ"}, 400, "Sec-WebSocket-Key",
         id="key-unpadded"),
    case({"Sec-WebSocket-Key": base64.b64encode(b"fifteen bytes!!").decode()}, 400,
         "Sec-WebSocket-Key", id="key-wrong-length"),
    case({"Sec-WebSocket-Key": HUGE_KEY}, 400, "Sec-WebSocket-Key", id="key-huge"),
    case({"Sec-WebSocket-Key": KEY + "\r\nSec-WebSocket-Key: " + KEY}, 400,
         "Sec-WebSocket-Key", id="key-twice"),
    case({"Host": None}, 400, "Host", id="host-missing"),
    case(None, 400, "HTTP/1.1", version="HTTP/1.0", id="http-1.0"),
    case(None, 400, "GET", method="POST", id="post"),
    case(None, 400, "GET", method="HEAD", id="head"),
]


def test_the_tables_base_handshake_is_accepted(server):
    answer, _ = exchange(server.port, handshake())
    assert answer.status == 101
    answer.close()


@pytest.mark.parametrize(("request_bytes", "status", "words"), CASES)
def test_malformed_handshake_gets_its_4xx_and_a_reason(server, request_bytes, status, words):
    answer, body = exchange(server.port, request_bytes)
    assert answer.status == status, answer.status_line
    reason = body.decode()
    assert answer.headers["content-type"].startswith("text/plain")
    assert reason.endswith("\n") and "\n" not in reason[:-1] and words in reason
    assert answer.file.read() == b""  # the server closed: no second request on it
    answer.close()
    wait_for_log(server, f"{status} {request_bytes.split()[0].decode()} /ws/h: {reason[:-1]}")
    assert "Traceback" not in server.log_text()


def test_unsupported_version_names_the_supported_ones(server):
    answer, _ = exchange(server.port, handshake({"Sec-WebSocket-Version": "14"}))
    assert answer.status == 426
    assert answer.headers["sec-websocket-version"] == "13, 8, 7"
    assert answer.headers["upgrade"] == "websocket"
    answer.close()


@pytest.fixture(scope="module", params=["on", "off"], ids=["hibernate", "plain"])
def shared_server(request):
    srv = RealServer("--hibernate", request.param).start()
    yield srv
    srv.stop()


#: header values a client could type: no control characters, latin-1 as on the wire
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                  blacklist_categories=("Cc",)), max_size=80)


def values(*plausible: str) -> st.SearchStrategy:
    return st.one_of(st.none(), st.sampled_from(plausible), PRINTABLE)


HEADER_VALUES = st.fixed_dictionaries({
    "Upgrade": values("websocket", "WebSocket", "h2c"),
    "Connection": values("Upgrade", "keep-alive, Upgrade", "close"),
    "Sec-WebSocket-Version": values("13", "8", "7", "0", "14", "255", "256", "013"),
    "Sec-WebSocket-Key": st.one_of(
        values(KEY), st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())),
})


@settings(max_examples=60, deadline=None)
@given(HEADER_VALUES)
def test_no_handshake_header_values_give_a_5xx(shared_server, headers):
    answer, _ = exchange(shared_server.port, handshake(headers))
    assert 100 <= answer.status < 500, (headers, answer.status_line)
    answer.close()
    assert "Traceback" not in shared_server.log_text()

"""comet.handshake.problem: the opening handshake judged from the environ alone, no socket."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comet.handshake import SUPPORTED_VERSIONS, problem

KEY = base64.b64encode(b"sixteen byte key").decode()

VALID = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/ws/a",
         "HTTP_HOST": "127.0.0.1", "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
         "HTTP_SEC_WEBSOCKET_KEY": KEY, "HTTP_SEC_WEBSOCKET_VERSION": "13"}

PLAIN_GET = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/ws/a",
             "HTTP_HOST": "127.0.0.1"}


def changed(base: dict, **changes: str | None) -> dict:
    """``base`` with each change applied; None removes the key."""
    environ = {**base, **changes}
    return {key: value for key, value in environ.items() if value is not None}


@pytest.mark.parametrize("environ", [
    pytest.param(VALID, id="valid"),
    pytest.param(changed(VALID, HTTP_UPGRADE="WebSocket"), id="upgrade-any-case"),
    pytest.param(changed(VALID, HTTP_CONNECTION="keep-alive, Upgrade"), id="connection-list"),
    pytest.param(changed(VALID, HTTP_CONNECTION="upgrade"), id="connection-lower-case"),
    pytest.param(changed(VALID, HTTP_SEC_WEBSOCKET_VERSION="8"), id="version-8"),
    pytest.param(changed(VALID, HTTP_SEC_WEBSOCKET_VERSION="7"), id="version-7"),
    pytest.param(changed(VALID, HTTP_SEC_WEBSOCKET_KEY="dGhlIHNhbXBsZSBub25jZQ=="),
                 id="key-of-rfc-6455"),
    pytest.param(changed(VALID, HTTP_ORIGIN="http://elsewhere", HTTP_SEC_WEBSOCKET_PROTOCOL="x"),
                 id="optional-fields"),
    pytest.param(PLAIN_GET, id="plain-get-is-not-a-handshake"),
    pytest.param(changed(PLAIN_GET, HTTP_CONNECTION="keep-alive"), id="keep-alive-get"),
    pytest.param(changed(PLAIN_GET, REQUEST_METHOD="POST"), id="plain-post"),
])
def test_no_problem(environ):
    assert problem(environ) is None


def short(changes: dict) -> str:
    return ",".join(f"{key.removeprefix('HTTP_')}={value!r:.20}" for key, value in changes.items())


@pytest.mark.parametrize(("changes", "status", "words"), [
    ({"REQUEST_METHOD": "POST"}, 400, "must be a GET, not 'POST'"),
    ({"REQUEST_METHOD": "HEAD"}, 400, "must be a GET, not 'HEAD'"),
    ({"SERVER_PROTOCOL": "HTTP/1.0"}, 400, "needs HTTP/1.1, not 'HTTP/1.0'"),
    ({"HTTP_HOST": None}, 400, "Host"),
    ({"HTTP_HOST": ""}, 400, "Host"),
    ({"HTTP_UPGRADE": None}, 400, "Upgrade is missing"),
    ({"HTTP_UPGRADE": ""}, 400, "Upgrade '' is not websocket"),
    ({"HTTP_UPGRADE": "h2c"}, 400, "Upgrade 'h2c' is not websocket"),
    ({"HTTP_UPGRADE": "websocket, h2c"}, 400, "is not websocket"),
    ({"HTTP_UPGRADE": "w" * 9000}, 400, "'" + "w" * 40 + "'..."),
    ({"HTTP_CONNECTION": None}, 400, "Connection is missing"),
    ({"HTTP_CONNECTION": ""}, 400, "Connection '' does not name Upgrade"),
    ({"HTTP_CONNECTION": "keep-alive"}, 400, "does not name Upgrade"),
    ({"HTTP_CONNECTION": "notupgrade"}, 400, "does not name Upgrade"),
    ({"HTTP_SEC_WEBSOCKET_KEY": None}, 400, "Sec-WebSocket-Key is missing"),
    ({"HTTP_SEC_WEBSOCKET_KEY": ""}, 400, "Sec-WebSocket-Key '' is not"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "not base64 at all!!!!!!!"}, 400, "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ"}, 400, "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "!dGhlIHNhbXBsZSBub25jZQ="}, 400, "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "\xe9" * 24}, 400, "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"15 bytes only!!").decode()}, 400,
     "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"k" * 6000).decode()}, 400, "..."),
    ({"HTTP_SEC_WEBSOCKET_KEY": f"{KEY},{KEY}"}, 400, "16 bytes in base64"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": None}, 400, "Sec-WebSocket-Version is missing"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": ""}, 400, "Sec-WebSocket-Version '' is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "thirteen"}, 400, "is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "13, 8"}, 400, "is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "013"}, 400, "is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "256"}, 400, "is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "\xb9\xb3"}, 400, "is not a version"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "0"}, 426, "version 0 is not supported"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "12"}, 426, "version 12 is not supported"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "255"}, 426, "version 255 is not supported"),
], ids=lambda value: short(value) if isinstance(value, dict) else "")
def test_problem(changes, status, words):
    found = problem(changed(VALID, **changes))
    assert found is not None
    assert int(found.status[:3]) == status
    assert words in found.reason and "\n" not in found.reason and len(found.reason) < 200


def test_a_handshake_without_upgrade_is_still_a_handshake():
    """Any one handshake field marks the request as one, so it is judged, not passed on."""
    for field in ("HTTP_SEC_WEBSOCKET_KEY", "HTTP_SEC_WEBSOCKET_VERSION", "HTTP_UPGRADE"):
        found = problem(changed(PLAIN_GET, **{field: "x"}))
        assert found is not None and found.status.startswith("400")
    assert problem(changed(PLAIN_GET, HTTP_CONNECTION="Upgrade")) is not None


@pytest.mark.parametrize("version", ["", "thirteen", "0", "14", "255"])
def test_a_version_problem_names_the_supported_versions(version):
    found = problem(changed(VALID, HTTP_SEC_WEBSOCKET_VERSION=version))
    assert ("Sec-WebSocket-Version", ", ".join(SUPPORTED_VERSIONS)) in found.headers
    assert "13, 8, 7" in found.reason


def test_426_says_what_to_upgrade_to():
    found = problem(changed(VALID, HTTP_SEC_WEBSOCKET_VERSION="14"))
    assert found.status == "426 Upgrade Required"
    assert ("Upgrade", "websocket") in found.headers


#: header values as pywsgi puts them in the environ: latin-1, no control characters
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                  blacklist_categories=("Cc",)), max_size=40)


def field(*plausible: str) -> st.SearchStrategy:
    return st.one_of(st.none(), st.sampled_from(plausible), PRINTABLE)


ENVIRONS = st.fixed_dictionaries({
    "REQUEST_METHOD": field("GET", "POST"),
    "SERVER_PROTOCOL": field("HTTP/1.1", "HTTP/1.0"),
    "HTTP_HOST": field("127.0.0.1"),
    "HTTP_UPGRADE": field("websocket", "WebSocket"),
    "HTTP_CONNECTION": field("Upgrade", "keep-alive, Upgrade"),
    "HTTP_SEC_WEBSOCKET_KEY": st.one_of(
        field(KEY), st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode())),
    "HTTP_SEC_WEBSOCKET_VERSION": field(*SUPPORTED_VERSIONS, "14"),
}).map(lambda environ: {k: v for k, v in environ.items() if v is not None})


@settings(max_examples=300)
@given(ENVIRONS)
def test_what_passes_is_what_gevent_websocket_accepts(environ):
    """gevent-websocket's own checks (handler.py, upgrade_websocket and
    upgrade_connection) cannot fail on a handshake that passes, so its broken
    refusals are never reached; anything else gets 400 or 426 and one line."""
    found = problem(environ)
    if found is not None:
        assert found.status[:3] in ("400", "426") and "\n" not in found.reason
        return
    if "HTTP_UPGRADE" not in environ:  # not a handshake: the app answers it
        assert not {"HTTP_SEC_WEBSOCKET_KEY", "HTTP_SEC_WEBSOCKET_VERSION"} & environ.keys()
        return
    assert environ["HTTP_UPGRADE"].lower() == "websocket"
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert "upgrade" in environ["HTTP_CONNECTION"].lower()
    assert environ["HTTP_SEC_WEBSOCKET_VERSION"] in SUPPORTED_VERSIONS
    assert len(base64.b64decode(environ["HTTP_SEC_WEBSOCKET_KEY"].strip())) == 16

"""Who may listen, against the real server: tokens on every transport, refusals, expiry, logs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import requests
import websocket

from tests import tokenkeys as keys
from tests.chunked import StrictResponse
from tests.realserver import RealServer, post
from tests.sse import open_events

HS_ENV = {"COMET_TOKEN_SECRET": keys.SECRET}


@pytest.fixture(scope="module")
def hs_server():
    """One HS256 server for the tests that do not depend on the connection's life."""
    srv = RealServer("--log-level", "debug", "--poll-timeout", "0.5", env=HS_ENV).start()
    yield srv
    srv.stop()


def get(server: RealServer, path: str, **kw) -> requests.Response:
    return requests.get(server.url + path, timeout=10, stream=True, **kw)


def ws_connect(server: RealServer, path: str, **kw) -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}", timeout=10, **kw)


def status_of(server: RealServer, path: str, **kw) -> int:
    with get(server, path, **kw) as answer:
        return answer.status_code


# -- who gets in --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/events/alice", "/test/alice", "/poll/alice"])
def test_no_token_is_a_401_that_asks_for_a_bearer_token(hs_server, path):
    with get(hs_server, path) as answer:
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "missing token" in answer.text


def test_a_websocket_without_a_token_is_refused_before_the_upgrade(hs_server):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(hs_server, "/ws/alice")
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(hs_server, "/ws/alice", header=[f"Authorization: Bearer {keys.hs256('bob')}"])
    assert refused.value.status_code == 403
    ws = ws_connect(hs_server, "/ws/alice", header=[f"Authorization: Bearer {keys.hs256()}"])
    hs_server.wait_for(lambda s: s["connections"].get("ws") == 1, what="ws open")
    post(hs_server, "/send/alice", b"for alice")
    assert ws.recv() == "for alice"
    ws.close()


@pytest.mark.parametrize("how", ["header", "cookie", "query"])
def test_a_token_is_taken_from_header_cookie_or_query(hs_server, how):
    token = keys.hs256("carol")
    kw = {"header": {"headers": {"Authorization": f"Bearer {token}"}},
          "cookie": {"cookies": {"comet_token": token}},
          "query": {"params": {"token": token}}}[how]
    with get(hs_server, "/events/carol", **kw) as answer:
        assert answer.status_code == 200
        assert next(answer.iter_lines()) == b"retry: 2000"


def test_an_id_the_token_does_not_cover_is_a_403(hs_server):
    token = keys.hs256("alice")
    auth = {"Authorization": f"Bearer {token}"}
    assert status_of(hs_server, "/events/bob", headers=auth) == 403
    assert status_of(hs_server, "/events/alice?id=bob", headers=auth) == 403
    assert status_of(hs_server, "/poll/bob", headers=auth) == 403


def test_the_ids_claim_covers_several_ids(hs_server):
    token = keys.hs256("dave", ids=["dave", "news"])
    events = open_events(hs_server.port, f"/events/dave?id=news&token={token}")
    hs_server.wait_for(lambda s: s["ids"] >= 2, what="logged in as both")
    post(hs_server, "/send/news", b"headline")
    assert events.next_message().data == "headline"
    events.close()
    assert status_of(hs_server, f"/events/dave?id=news&id=sport&token={token}") == 403


@pytest.mark.parametrize("token, reason", [
    (keys.hs256(ttl=-60), "expired"),
    (keys.unsigned(), "algorithm not allowed"),
    (keys.hs256(secret="not the server's secret, but as long as one...."), "bad signature"),
    ("not.a.token", "malformed token"),
])
def test_a_bad_token_is_a_401_with_its_reason_and_never_echoed(hs_server, token, reason):
    with get(hs_server, "/events/alice", params={"token": token}) as answer:
        assert answer.status_code == 401
        assert f'error_description="{reason}"' in answer.headers["WWW-Authenticate"]
        assert reason in answer.text and token not in answer.text


def test_refusals_are_counted_by_reason_in_stats(hs_server):
    before = hs_server.stats()["subscribers_refused"]
    status_of(hs_server, "/events/alice")
    status_of(hs_server, "/test/alice", params={"token": keys.hs256(ttl=-60)})
    status_of(hs_server, "/poll/bob", params={"token": keys.hs256()})
    after = hs_server.stats()["subscribers_refused"]
    for reason in ("missing token", "expired", "id not covered"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, (reason, before, after)


def test_publishing_needs_no_subscriber_token(hs_server):
    assert post(hs_server, "/send/anyone", b"hi")["delivered"] == 0


def test_no_token_reaches_the_log_even_at_debug_level(hs_server):
    """The server's own lines and the access log (pywsgi's request line, query string
    included) both; the access line is there, with the token hidden."""
    good, bad = keys.hs256("erin"), keys.hs256("erin", ttl=-60)
    with get(hs_server, "/events/erin", params={"token": good}) as answer:
        assert answer.status_code == 200
        next(answer.iter_lines())
    for kw in ({"params": {"token": bad}}, {"headers": {"Authorization": f"Bearer {bad}"}},
               {"cookies": {"comet_token": bad}}):
        assert status_of(hs_server, "/events/erin", **kw) == 401
    status_of(hs_server, "/poll/erin", params={"token": good, "id": "x"})
    raw = socket.create_connection(("127.0.0.1", hs_server.port), timeout=10)
    raw.sendall(f"BREW /events/erin?token={good} HTTP/1.1\r\n\r\n".encode())
    raw.recv(4096)
    raw.close()
    hs_server.wait_for_log('"GET /events/erin?token=[redacted] HTTP/1.1" 200')
    hs_server.wait_for_log("401 GET /events/erin: token refused: expired")
    text = hs_server.log_text()
    for token in (good, bad):
        for part in token.split("."):
            assert part not in text


# -- keys other than a secret in the environment -----------------------------------------

def test_the_secret_may_come_from_a_file(tmp_path):
    path = keys.write(tmp_path, "secret", keys.SECRET + "\n")
    srv = RealServer("--token-secret-file", path).start()
    try:
        assert status_of(srv, "/poll/alice", params={"token": keys.hs256()}) == 200
        assert status_of(srv, "/poll/alice") == 401
        assert keys.SECRET not in srv.log_text()
    finally:
        srv.stop()


@pytest.mark.parametrize("make, algorithm", [(keys.rsa_key, "RS256"), (keys.ec_key, "ES256")])
def test_a_public_key_server_accepts_its_signer_only(tmp_path, make, algorithm):
    key = make()
    pem = keys.public_pem(key)
    srv = RealServer("--token-public-key", keys.write(tmp_path, "public.pem", pem),
                     "--poll-timeout", "0.2").start()
    try:
        srv.wait_for_log(f"subscribers need a token: {algorithm}")
        assert status_of(srv, "/poll/alice", params={"token": keys.signed(key, algorithm)}) \
            == 200
        assert status_of(srv, "/poll/alice",
                         params={"token": keys.signed(make(), algorithm)}) == 401
        assert status_of(srv, "/poll/alice", params={"token": keys.forged_hs256(pem)}) == 401
        assert status_of(srv, "/poll/alice", params={"token": keys.unsigned()}) == 401
        assert srv.stats()["subscribers_refused"] == {"algorithm not allowed": 2,
                                                      "bad signature": 1}
    finally:
        srv.stop()


def test_a_jwks_server_picks_the_key_by_kid(tmp_path):
    rsa_key, ec_key = keys.rsa_key(), keys.ec_key()
    jwks = {"keys": [keys.public_jwk(rsa_key, "r1"), keys.public_jwk(ec_key, "e1")]}
    srv = RealServer("--token-jwks", keys.write(tmp_path, "jwks.json", json.dumps(jwks)),
                     "--poll-timeout", "0.2").start()
    try:
        for token, status in [(keys.signed(rsa_key, "RS256", kid="r1"), 200),
                              (keys.signed(ec_key, "ES256", kid="e1"), 200),
                              (keys.signed(ec_key, "ES256", kid="r1"), 401),
                              (keys.signed(rsa_key, "RS256", kid="zz"), 401)]:
            assert status_of(srv, "/poll/alice", params={"token": token}) == status
    finally:
        srv.stop()


def test_audience_and_issuer_are_checked(tmp_path):
    srv = RealServer("--token-audience", "comet", "--token-issuer", "https://auth",
                     "--poll-timeout", "0.2", env=HS_ENV).start()
    try:
        def status(**claims):
            return status_of(srv, "/poll/alice", params={"token": keys.hs256(**claims)})
        assert status(aud="comet", iss="https://auth") == 200
        assert status(aud="other", iss="https://auth") == 401
        assert status(aud="comet", iss="https://other") == 401
        assert srv.stats()["subscribers_refused"] == {"wrong audience": 1, "wrong issuer": 1}
    finally:
        srv.stop()


# -- expiry on a held connection, in both lives ------------------------------------------

def expiring_server(start_server) -> RealServer:
    return start_server("--token-leeway", "0", "--poll-timeout", "60", "--heartbeat", "60",
                        "--interval", "60", env=HS_ENV)


def test_an_sse_stream_ends_with_an_expired_event(start_server):
    server = expiring_server(start_server)
    events = open_events(server.port, f"/events/alice?token={keys.hs256(ttl=2)}")
    event = events.next_message()
    assert (event.event, event.data) == ("expired", "token expired")
    assert events.response.next_chunk() == b""  # the last chunk: the stream is over
    events.close()
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="closed")
    assert stats["ends"].get("token expired") == 1 and stats["token_timers"] == 0


def test_a_websocket_closes_with_4001_when_its_token_expires(start_server):
    server = expiring_server(start_server)
    ws = ws_connect(server, f"/ws/alice?token={keys.hs256(ttl=2)}")
    ws.settimeout(15)
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 4001
    assert frame.data[2:] == b"token expired"
    ws.close()
    server.wait_for(lambda s: s["connections"]["total"] == 0 and s["token_timers"] == 0,
                    what="closed")


def test_a_test_stream_gets_a_farewell_chunk_when_its_token_expires(start_server):
    server = expiring_server(start_server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(f"GET /test/alice HTTP/1.1\r\nHost: x\r\nCookie: comet_token="
                 f"{keys.hs256(ttl=2)}\r\n\r\n".encode())
    response = StrictResponse(sock)
    assert response.status == 200
    chunks = response.chunks_until(lambda c: c == b"")
    assert chunks[-2:] == [b"Bye: token expired\n", b""]
    response.close()


def test_a_waiting_poll_is_answered_when_its_token_expires(start_server):
    """--poll-timeout is 60 s: an answer within the client's 15 s can only be the expiry's."""
    server = expiring_server(start_server)
    answer = requests.get(server.url + "/poll/alice", params={"token": keys.hs256(ttl=2)},
                          timeout=15)
    assert answer.status_code == 200 and answer.json()["messages"] == []
    server.wait_for(lambda s: s["connections"]["total"] == 0 and s["token_timers"] == 0,
                    what="closed")
    assert server.stats()["ends"].get("token expired") == 1  # in both lives
    again = requests.get(server.url + "/poll/alice", params={"token": keys.hs256(ttl=-1)},
                         timeout=15)
    assert again.status_code == 401


def test_a_connection_closed_early_leaves_no_timer(start_server):
    """A sleeping stream sees its client gone at its next heartbeat: 0.2 s here."""
    server = start_server("--heartbeat", "0.2", env=HS_ENV)
    streams = [open_events(server.port, f"/events/u{n}?token={keys.hs256(f'u{n}')}")
               for n in range(5)]
    server.wait_for(lambda s: s["token_timers"] == 5, what="5 timers")
    for stream in streams:
        stream.close()
    server.wait_for(lambda s: s["token_timers"] == 0 and s["connections"]["total"] == 0,
                    what="timers gone with their connections")


# -- start-up, and the minting tool ------------------------------------------------------

def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_no_token_setting_says_once_that_subscribing_is_open():
    srv = RealServer("--poll-timeout", "0.2").start()
    try:
        srv.wait_for_log("serving on")
        assert sum("subscribing is open to anyone" in line for line in srv.lines) == 1
        assert status_of(srv, "/poll/alice") == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("args, env, said", [
    (["--token-public-key", "/nonexistent.pem"], HS_ENV,
     "COMET_TOKEN_SECRET and --token-public-key"),
    (["--token-public-key", "/nonexistent.pem"], {}, "cannot read /nonexistent.pem"),
    (["--token-jwks", "/etc/hostname"], {}, "not JSON"),
    ([], {"COMET_TOKEN_SECRET": "short"}, "at least 32"),
])
def test_unusable_token_settings_stop_the_server_with_status_2(args, env, said):
    done = run(["-m", "comet.server", "--host", "127.0.0.1", "--port", "0", *args], env)
    assert done.returncode == 2
    assert said in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert "short" not in done.stderr


def test_a_private_key_file_is_refused_as_the_public_key(tmp_path):
    path = keys.write(tmp_path, "private.pem", keys.private_pem(keys.rsa_key()))
    done = run(["-m", "comet.server", "--port", "0", "--token-public-key", path])
    assert done.returncode == 2 and "not a PEM public key" in done.stderr


def test_comet_token_mints_what_the_server_accepts(hs_server, tmp_path):
    minted = run(["-m", "comet.token", "frank", "news", "--ttl", "60"], HS_ENV)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert status_of(hs_server, "/poll/frank?id=news", params={"token": token}) == 200
    assert status_of(hs_server, "/poll/frank?id=sport", params={"token": token}) == 403
    secret_file = keys.write(tmp_path, "secret", keys.SECRET)
    from_file = run(["-m", "comet.token", "frank", "--token-secret-file", secret_file])
    assert status_of(hs_server, "/poll/frank",
                     params={"token": from_file.stdout.strip()}) == 200


def test_comet_token_signs_es256_with_a_private_key(tmp_path):
    key = keys.ec_key()
    private = keys.write(tmp_path, "private.pem", keys.private_pem(key))
    public = keys.write(tmp_path, "public.pem", keys.public_pem(key))
    srv = RealServer("--token-public-key", public, "--poll-timeout", "0.2").start()
    try:
        minted = run(["-m", "comet.token", "alice", "--private-key", private])
        assert minted.returncode == 0, minted.stderr
        assert status_of(srv, "/poll/alice", params={"token": minted.stdout.strip()}) == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("args, said", [
    (["alice"], "no key to sign with"),
    (["bad id!"], "bad id"),
    (["alice", "--private-key", "/nonexistent.pem"], "cannot read"),
])
def test_comet_token_errors_are_clear(args, said):
    done = run(["-m", "comet.token", *args])
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr


def test_tokens_from_comet_token_expire_as_asked():
    minted = run(["-m", "comet.token", "alice", "--ttl", "120"], HS_ENV).stdout.strip()
    import jwt
    claims = jwt.decode(minted, keys.SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and 110 < claims["exp"] - time.time() <= 121

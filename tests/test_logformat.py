"""``--log-format json``: every line a JSON object, and no secret in any line.

A real server, with every kind of secret comet knows (a subscriber token
secret, publisher keys, a Redis URL with a password) and the debug access
log on, is sent requests that carry them, good and bad, including the ones
that get logged; then every line it wrote is parsed and searched for each
secret. The workers of ``--workers 2`` and their master write JSON too.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import sys

import requests

from comet.logformat import JsonFormatter
from tests import tokenkeys as keys
from tests.realserver import RealServer, subscribed
from tests.redisservers import RedisServer, redis_binary_or_skip
from tests.sse import open_events
from tests.workerservers import WorkersServer

PASSWORD = "redispw-" + secrets.token_hex(12)
KEYS = ("pubkey-" + secrets.token_hex(16), "pubkey-" + secrets.token_hex(16))
GUESS = "pubkey-" + secrets.token_hex(16)

#: what every json line holds
REQUIRED = {"time", "level", "logger", "pid", "message"}


def records(server: RealServer) -> list[dict]:
    """Every line the server wrote, each parsed on its own (a line that is not one JSON
    object fails the test, naming it)."""
    found = []
    for line in server.lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict) and REQUIRED <= record.keys(), line
        found.append(record)
    return found


def refused_requests(server: RealServer, good: str) -> None:
    """Requests carrying secrets, good and bad, that the server refuses and logs."""
    url = server.url
    assert requests.get(f"{url}/events/alice?token={good}x", timeout=10).status_code == 401
    assert requests.get(f"{url}/poll/alice", timeout=10,
                        headers={"Authorization": f"Bearer {good[:-3]}"}).status_code == 401
    assert requests.get(f"{url}/events/bob", cookies={"comet_token": good},
                        timeout=10).status_code == 403  # a token for alice, not bob
    for headers in ({"Authorization": f"Bearer {GUESS}"}, {"X-API-Key": GUESS}, {}):
        assert requests.post(f"{url}/send/alice", data=b"no", headers=headers,
                             timeout=10).status_code in (401, 403)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        # a request line pywsgi refuses (bad version), quoted in its error line
        raw.sendall(f"GET /events/alice?token={good} HTTP/1\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


def test_json_lines_parse_one_by_one_and_hold_no_secret():
    redis_binary_or_skip("redis-server")
    good = keys.hs256("alice")
    with RedisServer(password=PASSWORD) as redis:
        server = RealServer("--log-format", "json", "--log-level", "debug",
                            "--heartbeat", "0.2", env={
                                "COMET_REDIS": redis.url, "COMET_TOKEN_SECRET": keys.SECRET,
                                "COMET_PUBLISH_KEYS": ",".join(KEYS)}).start()
        try:
            stream = open_events(server.port, f"/events/alice?token={good}")
            subscribed(server)
            published = requests.post(f"{server.url}/send/alice", data=b"hello", timeout=10,
                                      headers={"Authorization": f"Bearer {KEYS[0]}"})
            assert published.status_code == 200
            event = stream.next_event()
            while event.data is None:  # the retry hint, heartbeats
                event = stream.next_event()
            assert event.data == "hello"
            refused_requests(server, good)
            assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
            stream.response.close()
            server.wait_for(lambda s: s["connections"]["total"] == 0, what="the stream closed")
            assert server.terminate() == 0
            server.wait_for_log("stopped")
        finally:
            server.stop()
    found = records(server)
    secret_texts = (keys.SECRET, *KEYS, GUESS, PASSWORD, good, good.rsplit(".", 1)[1])
    for line in server.lines:
        for secret in secret_texts:
            assert secret not in line, f"a secret in {line!r}"
    assert any("serving on" in r["message"] for r in found)
    requests_logged = [r for r in found if r.get("event") == "request"]
    assert {r.get("status") for r in requests_logged} >= {200, 401, 403}
    assert all(r["peer"] == "127.0.0.1" for r in requests_logged)
    assert any(r.get("event") == "refused" and r.get("status") == 401
               and r.get("peer") == "127.0.0.1" for r in found)
    assert any("publishers refused" in r["message"] and r.get("event") == "refused"
               for r in found)
    closed = [r for r in found if r.get("event") == "closed"]
    assert closed and closed[0]["transport"] == "events" and closed[0]["ids"] == 1 \
        and closed[0]["end"]
    assert any("token=[redacted]" in r["message"] for r in found), "the quoted request line"


def test_a_master_and_its_workers_all_write_json(redis_server):
    server = WorkersServer("--redis", redis_server.url, "--log-format", "json").start()
    try:
        server.workers()
        assert server.terminate(30) == 0
        server.wait_for_log("master stopped")
    finally:
        server.stop()
    found = records(server)
    assert {r["logger"] for r in found} >= {"comet.master", "comet.worker"}
    assert len({r["pid"] for r in found}) >= 3, "the master and two workers"


def test_a_traceback_stays_in_its_one_line():
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        record = logging.LogRecord("comet.x", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                   sys.exc_info())
    record.transport, record.unknown = "ws", "not a field"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x" and parsed["transport"] == "ws"
    assert "unknown" not in parsed and "line two" in parsed["exception"]

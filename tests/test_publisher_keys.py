"""Who may publish, against the real server: keys, headers, 401/403/429, rotation, logs.

The server runs as a real process; the publishers are ``requests`` and flood.msggen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from comet.publishers import fingerprint
from tests.floodservers import run_module
from tests.realserver import RealServer

ENV_KEYS = ("env-key-one-0123456789", "env-key-two-0123456789")
LEGACY_KEY = "legacy-key-0123456789"
FILE_KEY = "file-key-0123456789"
ALL_KEYS = (*ENV_KEYS, LEGACY_KEY, FILE_KEY)


def publish(server: RealServer, path: str = "/send/a", key: str | None = None,
            header: str = "bearer", host: str = "127.0.0.1", **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if key is not None:
        headers.update({"Authorization": f"Bearer {key}"} if header == "bearer"
                       else {"X-API-Key": key})
    kw.setdefault("data", b"x")
    return requests.post(f"http://{host}:{server.port}{path}", headers=headers, timeout=10,
                         **kw)


def batch(server: RealServer, key: str | None, lines: int = 2) -> requests.Response:
    body = "".join(json.dumps({"id": f"u{n}", "message": "m"}) + "\n" for n in range(lines))
    return publish(server, "/send", key, data=body.encode(),
                   headers={"Content-Type": "application/x-ndjson"})


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """One server with keys from all three sources, at debug level (every line logged)."""
    path = tmp_path_factory.mktemp("keys") / "publishers"
    path.write_text(f"# the shop's backends\n\n{FILE_KEY}\n")
    srv = RealServer("--log-level", "debug", "--publish-key-file", str(path),
                     env={"COMET_PUBLISH_KEYS": ",".join(ENV_KEYS),
                          "COMET_PUBLISH_KEY": LEGACY_KEY}).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_configured_key_publishes_with_either_header(keyed, key, header):
    answer = publish(keyed, key=key, header=header)
    assert answer.status_code == 200 and answer.json()["id"] == "a"


def test_loopback_without_a_key_is_401_asking_for_a_bearer_key(keyed):
    answer = publish(keyed)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="comet"'
    assert "X-API-Key" in answer.text


@pytest.mark.parametrize("key", ["wrong", ENV_KEYS[0] + "x", ENV_KEYS[0][:-1]])
def test_a_wrong_key_is_403(keyed, key):
    assert publish(keyed, key=key).status_code == 403
    assert publish(keyed, key=key, header="x-api-key").status_code == 403


@pytest.mark.parametrize("path", ["/broadcast", "/send/b", "/stats/memory"])
def test_broadcast_send_and_memory_follow_the_rule(keyed, path):
    method = requests.get if path == "/stats/memory" else requests.post
    url = keyed.url + path
    assert method(url, data=b"x", timeout=10).status_code == 401
    assert method(url, data=b"x", timeout=10, headers={"X-API-Key": "no"}).status_code == 403
    assert method(url, data=b"x", timeout=10,
                  headers={"X-API-Key": FILE_KEY}).status_code == 200


def test_a_batch_follows_the_rule(keyed):
    assert batch(keyed, None).status_code == 401
    assert batch(keyed, "wrong").status_code == 403
    answer = batch(keyed, ENV_KEYS[1], lines=3)
    assert answer.status_code == 200 and answer.json()["accepted"] == 3


def test_refusals_are_counted_by_reason_and_stats_shows_fingerprints_only(keyed):
    before = keyed.stats()["publishers_refused"]
    publish(keyed)
    publish(keyed, key="wrong")
    stats = keyed.stats()
    refused = stats["publishers_refused"]
    assert refused["missing key"] == before.get("missing key", 0) + 1
    assert refused["wrong key"] == before.get("wrong key", 0) + 1
    assert stats["publish_keys"] == sorted(fingerprint(k) for k in ALL_KEYS)
    text = json.dumps(stats)
    assert not any(key in text for key in ALL_KEYS)


def test_no_key_reaches_the_log_even_at_debug_level(keyed):
    for key in ALL_KEYS:
        assert publish(keyed, key=key).status_code == 200
        assert publish(keyed, key=key + "-wrong").status_code == 403
    keyed.wait_for_log("publishers refused (wrong key)")
    keyed.wait_for_log("POST /send/a")  # the access log is on: every request has a line
    log = keyed.log_text()
    assert not any(key in log for key in ALL_KEYS)
    assert "publishers need a key: 4 publisher keys" in log


def test_a_key_guesser_gets_one_log_line_not_one_per_guess(keyed):
    for n in range(30):
        publish(keyed, key=f"guess-{n}")
    lines = [line for line in keyed.lines if "publishers refused (wrong key)" in line]
    assert len([line for line in lines if "more refused in" not in line]) == 1


# -- without keys ---------------------------------------------------------------------------

def _outside_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not address.address.startswith("127."):
                return address.address
    return None


def test_without_keys_loopback_publishes_and_others_get_403():
    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback IPv4 address to publish from")
    srv = RealServer("--host", outside).start()
    try:
        assert publish(srv, host=outside).status_code == 403  # from outside, no key helps
        assert publish(srv, key=FILE_KEY, host=outside).status_code == 403
        assert "loopback" in srv.log_text()
    finally:
        srv.stop()


def test_without_keys_loopback_publishes_without_one(start_server):
    srv = start_server()
    assert publish(srv).status_code == 200
    assert batch(srv, None).status_code == 200
    assert "publishing is for loopback clients only" in srv.log_text()


# -- publishes per second per key ---------------------------------------------------------

def test_over_the_rate_is_429_with_retry_after_and_a_batch_counts_its_messages():
    """0.01 a second: a bucket of one message that takes 100 s to refill, so the second
    publish of a key is over whatever the machine's pace."""
    srv = RealServer("--publish-rate-per-key", "0.01", env={
        "COMET_PUBLISH_KEYS": ",".join(ENV_KEYS)}).start()
    try:
        assert publish(srv, key=ENV_KEYS[0]).status_code == 200
        over = publish(srv, key=ENV_KEYS[0])
        assert over.status_code == 429 and 1 <= int(over.headers["Retry-After"]) <= 100
        assert publish(srv, "/broadcast", key=ENV_KEYS[0]).status_code == 429
        assert batch(srv, ENV_KEYS[1], lines=3).status_code == 200  # its own bucket, full
        over = batch(srv, ENV_KEYS[1], lines=1)  # three taken from one: 300 s of debt
        assert over.status_code == 429 and int(over.headers["Retry-After"]) > 200
        stats = srv.stats()
        assert stats["publishers_refused"] == {"over rate": 3}
        assert stats["publishes_limited"] == {fingerprint(ENV_KEYS[0]): 2,
                                              fingerprint(ENV_KEYS[1]): 1}
        for _ in range(20):
            publish(srv, key=ENV_KEYS[0])
        lines = [line for line in srv.lines if "publishers refused (over rate)" in line]
        assert len([line for line in lines if "more refused in" not in line]) == 1
    finally:
        srv.stop()


def test_the_keyless_loopback_publisher_has_a_bucket_too():
    srv = RealServer("--publish-rate-per-key", "0.01").start()
    try:
        assert publish(srv).status_code == 200
        assert publish(srv).status_code == 429
        assert srv.stats()["publishes_limited"] == {"loopback": 1}
    finally:
        srv.stop()


# -- rotation without a restart -----------------------------------------------------------

def accepted(server: RealServer, key: str) -> bool:
    return publish(server, key=key).status_code == 200


def wait_refused(server: RealServer, key: str) -> None:
    """Until the server refuses ``key`` (the file is looked at once a second at most)."""
    server.wait_for(lambda _: publish(server, key=key).status_code == 403,
                    what="the old key refused")


def test_a_rotated_key_file_takes_effect_without_a_restart(tmp_path):
    path = tmp_path / "keys"
    path.write_text("old-key-0123456789\n")
    srv = RealServer("--publish-key-file", str(path)).start()
    try:
        assert accepted(srv, "old-key-0123456789")
        path.write_text("new-key-0123456789\n# the old one is gone\n")
        wait_refused(srv, "old-key-0123456789")
        assert accepted(srv, "new-key-0123456789")
        srv.wait_for_log(f"{path} changed: publisher keys re-read, now 1 publisher keys")
        # emptied: the last good keys stay, with one warning
        path.write_text("# nothing\n")
        srv.wait_for(lambda _: accepted(srv, "new-key-0123456789") and
                     "keeping the last good publisher keys" in srv.log_text(),
                     what="the warning, with the new key still accepted")
        # SIGHUP re-reads it at once
        path.write_text("hup-key-0123456789\n")
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for_log("SIGHUP: publisher keys re-read")
        assert accepted(srv, "hup-key-0123456789")
        assert publish(srv, key="new-key-0123456789").status_code == 403
        assert srv.proc.poll() is None  # SIGHUP did not stop it
        assert srv.log_text().count("keeping the last good publisher keys") == 1
        assert "key-0123456789" not in srv.log_text()
    finally:
        srv.stop()


def test_workers_rotate_their_keys_without_a_restart(tmp_path, redis_server):
    path = tmp_path / "keys"
    path.write_text("old-key-0123456789\n")
    srv = RealServer("--workers", "2", "--redis", redis_server.url,
                     "--publish-key-file", str(path)).start()
    try:
        srv.wait_for(lambda s: len(s.get("workers", [])) == 2, what="two workers")
        pids = {w["pid"] for w in srv.stats()["workers"]}
        assert accepted(srv, "old-key-0123456789")
        path.write_text("new-key-0123456789\n")
        new = [fingerprint("new-key-0123456789")]

        def every_worker_rotated(stats: dict) -> bool:
            publish(srv, key="new-key-0123456789")  # a fresh connection: any worker
            return all(w.get("publish_keys") == new for w in stats["workers"])

        srv.wait_for(every_worker_rotated, timeout=30, what="every worker on the new key")
        for _ in range(10):  # fresh connections, spread over the workers by the kernel
            assert publish(srv, key="old-key-0123456789").status_code == 403
            assert accepted(srv, "new-key-0123456789")
        assert {w["pid"] for w in srv.stats()["workers"]} == pids  # no worker restarted
    finally:
        srv.stop()


# -- start-up errors ----------------------------------------------------------------------

def run_server(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comet.server", "--port", "0", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("content, said", [
    (None, "cannot read"),
    ("", "no key in it"),
    ("# only comments\n\n", "no key in it"),
])
def test_an_unusable_key_file_stops_the_server_with_one_line_and_status_2(tmp_path, content,
                                                                           said):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    result = run_server("--publish-key-file", str(path))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and said in errors[0]
    assert "serving on" not in result.stderr


def test_a_key_on_the_command_line_is_refused_and_not_repeated():
    result = run_server("--publish-key", "sekrit-0123456789")
    assert result.returncode == 2 and "COMET_PUBLISH_KEY" in result.stderr
    assert "sekrit" not in result.stderr


# -- the load tools -------------------------------------------------------------------------

def test_msggen_publishes_to_a_keyed_server_from_a_file_or_the_environment(keyed, tmp_path):
    key_file = tmp_path / "client-key"
    key_file.write_text(f"# msggen's key\n{ENV_KEYS[0]}\n")
    base = ["flood.msggen", "--base", keyed.url, "--ids", "1-5", "--rate", "20",
            "--duration", "0.5", "--report", "5"]
    out = tmp_path / "totals.json"
    result = run_module(*base, "--publish-key-file", str(key_file), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    totals = json.loads(out.read_text())["result"]
    assert totals["sent"] == totals["ok"] > 0 and totals["errors"] == 0
    assert ENV_KEYS[0] not in result.stdout + result.stderr
    by_env = subprocess.run([sys.executable, "-m", *base, "--json", str(out)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COMET_PUBLISH_KEY_FOR_CLIENT": FILE_KEY})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert json.loads(out.read_text())["result"]["errors"] == 0
    keyless = run_module(*base, "--json", str(out))
    totals = json.loads(out.read_text())["result"]
    assert keyless.returncode == 1 and totals["error_kinds"] == {"HTTP 401": totals["sent"]}

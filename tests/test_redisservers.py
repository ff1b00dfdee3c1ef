"""The Redis harness itself (:mod:`tests.redisservers`), against real redis-server processes.

The broker's tests will trust these servers to restart empty and stall on demand;
each of those is shown here first, with real processes and redis-py, never a mock.
Waits, not timing assertions: a paused server is shown by a client's own timeout
firing, not by measuring how long anything took.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.redisservers import (
    HOST,
    PortTaken,
    RedisServer,
    redis,
    redis_binary_or_skip,
    retries,
)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- one server ---------------------------------------------------------------------------

def test_a_server_answers_ping_and_stop_leaves_no_process_and_no_dir():
    redis_binary_or_skip("redis-server")
    server = RedisServer().start()
    pid, folder = server.pid, server.dir
    assert server.client().ping()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.stop()
    assert pid_gone(pid)
    assert not folder.exists()


def test_restart_keeps_the_port_and_loses_the_data(redis_server):
    redis_server.client().set("kept?", "no")
    port, old_pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port and pid_gone(old_pid)
    assert redis_server.client().get("kept?") is None
    assert redis_server.client().dbsize() == 0


def test_a_killed_server_is_gone_and_restarts_on_its_port(redis_server):
    pid, port = redis_server.pid, redis_server.port
    redis_server.kill()
    assert pid_gone(pid) and not redis_server.alive
    with pytest.raises(redis.ConnectionError):
        redis_server.client(socket_connect_timeout=1).ping()
    redis_server.restart()
    assert redis_server.port == port and redis_server.client().ping()


def test_a_paused_server_times_a_ping_out_and_answers_after_resume(redis_server):
    stalled = redis_server.client(socket_timeout=0.2)
    redis_server.pause()
    with pytest.raises(redis.TimeoutError):
        stalled.ping()
    redis_server.resume()
    assert redis_server.client(socket_timeout=5).ping()


def test_stop_ends_a_paused_server():
    redis_binary_or_skip("redis-server")
    server = RedisServer().start()
    pid = server.pid
    server.pause()
    server.stop()
    assert pid_gone(pid)


def test_a_password_is_required_and_carried_by_the_url():
    redis_binary_or_skip("redis-server")
    with RedisServer(password="secret") as server:
        assert server.url == f"redis://:secret@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=HOST, port=server.port, retry=retries()).ping()
        assert redis.Redis.from_url(server.url).ping()


def test_the_unix_socket_reaches_the_same_server():
    redis_binary_or_skip("redis-server")
    with RedisServer(unixsocket=True) as server:
        assert server.unix_url == f"unix://{server.dir}/redis.sock?db=0"
        redis.Redis.from_url(server.unix_url).set("via", "unix")
        assert server.client().get("via") == b"unix"


def test_a_port_already_taken_is_reported_and_leaves_nothing_running():
    """The failure that the retry with another port is for, caught as such."""
    redis_binary_or_skip("redis-server")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        server = RedisServer(port=taken.getsockname()[1])
        with pytest.raises(PortTaken):
            server.start()
    assert not server.alive and pid_gone(server.pid) and server.dir is None


def test_a_missing_binary_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_binary_or_skip("redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        redis_binary_or_skip("redis-server", "redis-cli")


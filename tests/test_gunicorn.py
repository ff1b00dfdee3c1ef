"""The same app under gunicorn's gevent worker; a second worker is refused."""

import os
import re
import subprocess
import sys
import time

import pytest
import requests

from tests.chunked import open_stream
from tests.realserver import free_port

pytest.importorskip("gunicorn")


def gunicorn(*args: str, worker: str = "gevent") -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "COMET_INTERVAL": "0.2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", worker, "--worker-connections", "1000",
         "-b", f"127.0.0.1:{port}", *args, "comet.wsgi:application"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def wait_until_serving(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)


def assert_clean_stop(proc: subprocess.Popen, stream) -> None:
    """SIGTERM: the stream gets its farewell and last chunk, and gunicorn exits 0."""
    proc.terminate()
    got = stream.chunks_until(lambda c: c.startswith(b"Bye"))
    assert got[-1] == b"Bye: server shutting down\n" and stream.next_chunk() == b""
    assert proc.wait(20) == 0


def test_gunicorn_gevent_worker_serves_streams_and_publishing():
    proc, port = gunicorn("-w", "1")
    try:
        wait_until_serving(proc, port)
        stream = open_stream(port, "/test/g")
        assert stream.next_chunk() == b"comet welcomes you! Your Id: g\n"
        assert stream.next_chunk() == b"Chunk 1 for id g\n"
        sent = requests.post(f"http://127.0.0.1:{port}/send/g", data=b"via gunicorn", timeout=10)
        assert sent.json()["delivered"] == 1
        got = stream.chunks_until(lambda c: c.startswith(b"Recvd"))
        assert got[-1] == b"Recvd msg: via gunicorn\n"
        assert_clean_stop(proc, stream)
    finally:
        proc.kill()
        proc.wait(20)


def test_second_worker_is_refused_with_a_clear_message():
    proc, _ = gunicorn("-w", "2")
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert re.search(r"one gunicorn worker \(-w 1\) until the Redis backplane", output)


def test_gunicorn_websocket_worker_serves_websockets():
    websocket = pytest.importorskip("websocket")
    proc, port = gunicorn("-w", "1",
                          worker="geventwebsocket.gunicorn.workers.GeventWebSocketWorker")
    try:
        wait_until_serving(proc, port)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/gw", timeout=10)
        deadline = time.monotonic() + 10
        while requests.post(f"http://127.0.0.1:{port}/send/gw", data=b"over ws",
                            timeout=10).json()["delivered"] == 0:
            assert time.monotonic() < deadline, "the websocket never logged in"
            time.sleep(0.05)
        assert ws.recv() == "over ws"
        ws.close()
    finally:
        proc.kill()
        proc.wait(20)


def test_comet_worker_hibernates_streams_and_serves_websockets():
    websocket = pytest.importorskip("websocket")
    proc, port = gunicorn("-w", "1", worker="comet.gunicorn.Worker")
    try:
        wait_until_serving(proc, port)
        stream = open_stream(port, "/test/h")
        assert stream.next_chunk() == b"comet welcomes you! Your Id: h\n"
        stats = requests.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
        assert stats["timers"] == 1  # on the timer wheel: hibernated, no greenlet
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/h", timeout=10)
        deadline = time.monotonic() + 10
        while requests.post(f"http://127.0.0.1:{port}/send/h", data=b"both",
                            timeout=10).json()["delivered"] < 2:
            assert time.monotonic() < deadline, "the websocket never logged in"
            time.sleep(0.05)
        assert ws.recv() == "both"
        assert stream.chunks_until(lambda c: c.startswith(b"Recvd"))[-1] == b"Recvd msg: both\n"
        assert_clean_stop(proc, stream)
    finally:
        proc.kill()
        proc.wait(20)

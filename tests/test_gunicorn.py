"""The same app under gunicorn's gevent worker; a second worker is refused."""

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

import comet.publish
from comet import rundir
from tests.chunked import open_stream
from tests.realserver import free_port

pytest.importorskip("gunicorn")


def gunicorn(*args: str, worker: str = "gevent",
             env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "COMET_INTERVAL": "0.2", **(env or {})}
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
    try:
        assert proc.wait(20) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("gunicorn did not stop:\n" + proc.communicate()[0]) from None


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
    assert re.search(r"one gunicorn worker \(-w 1\) unless COMET_REDIS names a Redis", output)


def test_two_workers_with_redis_deliver_to_each_others_clients(redis_server):
    """With COMET_REDIS, -w 2 runs; a message published through one worker reaches
    clients held by either (the kernel spreads connections over both)."""
    proc, port = gunicorn("-w", "2", worker="comet.gunicorn.Worker",
                          env={"COMET_REDIS": redis_server.url})
    try:
        wait_until_serving(proc, port)
        # Concurrent handshakes: one worker busy with one lets the other accept the next.
        with ThreadPoolExecutor(16) as pool:
            streams = list(pool.map(lambda n: open_stream(port, f"/test/w{n}"), range(48)))
        for stream in streams:
            assert stream.next_chunk().startswith(b"comet welcomes you!")
        for n, stream in enumerate(streams):
            # Connection: close: an idle keep-alive connection would hold its worker
            # up to gunicorn's graceful timeout at the stop below
            sent = requests.post(f"http://127.0.0.1:{port}/send/w{n}", data=b"to %d" % n,
                                 headers={"Connection": "close"}, timeout=10)
            assert sent.status_code == 200 and sent.json()["delivered"] is None
            got = stream.chunks_until(lambda c: c.startswith(b"Recvd"))
            assert got[-1] == b"Recvd msg: to %d\n" % n
        # From outside every worker: only Redis can bring it to the stream's worker.
        comet.publish.publish(redis.Redis.from_url(redis_server.url), "w0", "from a backend")
        assert streams[0].chunks_until(lambda c: c.startswith(b"Recvd"))[-1] == (
            b"Recvd msg: from a backend\n")
        # /stats answers for the whole server (tests/test_gunicorn_stats.py has the details)
        deadline = time.monotonic() + 30
        while len((stats := requests.get(f"http://127.0.0.1:{port}/stats",
                                         timeout=10).json())["workers"]) < 2:
            assert time.monotonic() < deadline, f"both workers answer: {stats}"
            time.sleep(0.1)
        assert stats["connections"]["total"] == len(streams)
        assert stats["messages"]["in"] == len(streams)
        assert_clean_stop(proc, streams[0])
        # Without conf/gunicorn.conf.py's on_exit hook, the last worker out removed it.
        assert not rundir.for_gunicorn_master(proc.pid).exists()
    finally:
        proc.kill()
        proc.wait(20)


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

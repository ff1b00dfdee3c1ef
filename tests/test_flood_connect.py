"""flood.connect against real sockets: every way an opening ends, the ``--concurrency``
bound, and no greenlet per connection being opened."""

from __future__ import annotations

import gc
import socket

import gevent
import gevent.event
import greenlet
from gevent.server import StreamServer

from flood.worker import Flood, Plan
from tests.floodservers import HEAD, chunk


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def serve(handle) -> StreamServer:
    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


def flood(port: int, count: int, **plan) -> dict:
    """Run a flood of ``count`` URLs until nothing is left to do (or 30 s)."""
    urls = [f"http://127.0.0.1:{port}/test/{i}" for i in range(count)]
    the_flood = Flood(Plan(**plan), urls, lambda line: None)
    gevent.spawn_later(30, the_flood.stop)
    return the_flood.run()


def test_a_server_that_never_answers_ends_each_opening_as_timeout():
    def handle(sock, _addr):
        sock.recv(4096)
        gevent.sleep(60)

    server = serve(handle)
    try:
        final = flood(server.server_port, 3, timeout=0.3)
    finally:
        server.stop(timeout=1)
    assert final["reasons"] == {"timeout": 3}
    assert (final["closed"], final["active"], final["pending"]) == (3, 0, 0)


def test_a_connect_the_listener_never_takes_ends_as_timeout():
    # a full accept queue drops SYNs: these connects stay in progress until the deadline
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    try:
        final = flood(listener.getsockname()[1], 6, timeout=0.3)
    finally:
        listener.close()
    assert final["reasons"] == {"timeout": 6}
    assert (final["closed"], final["pending"]) == (6, 0)


def test_a_server_that_closes_before_the_head_is_named():
    def handle(sock, _addr):
        sock.recv(4096)

    server = serve(handle)
    try:
        final = flood(server.server_port, 2)
    finally:
        server.stop(timeout=1)
    assert final["reasons"] == {"closed before response head": 2}


def test_an_endless_head_is_refused_not_buffered():
    def handle(sock, _addr):
        sock.recv(4096)
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000)
        gevent.sleep(5)

    server = serve(handle)
    try:
        final = flood(server.server_port, 1)
    finally:
        server.stop(timeout=1)
    assert final["reasons"] == {"response head too long": 1}


def test_a_head_in_many_pieces_is_gathered():
    def handle(sock, _addr):
        sock.recv(4096)
        for i in range(0, len(HEAD), 7):
            sock.sendall(HEAD[i:i + 7])
            gevent.sleep(0.01)
        sock.sendall(chunk("welcome\n"))
        while sock.recv(4096):
            pass

    server = serve(handle)
    try:
        final = flood(server.server_port, 2, duration=1.0)
    finally:
        server.stop(timeout=1)
    assert (final["active"], final["closed"], final["chunks"]) == (2, 0, 2)


def test_concurrency_bounds_the_connections_being_opened_and_costs_no_greenlet_each():
    """The server answers no head until 40 requests wait: with --concurrency 40 exactly
    40 are in flight, then each answer lets one more in; the flood adds a handful of
    greenlets, not one per opening."""
    waiting = {"now": 0, "most": 0, "greenlets": 0}
    full = gevent.event.Event()

    def handle(sock, _addr):
        sock.recv(4096)
        waiting["now"] += 1
        waiting["most"] = max(waiting["most"], waiting["now"])
        if waiting["now"] == 40 and not full.is_set():
            waiting["greenlets"] = live_greenlets()
            full.set()
        full.wait()
        waiting["now"] -= 1
        sock.sendall(HEAD + chunk("welcome\n"))
        while sock.recv(4096):
            pass

    before = live_greenlets()  # what earlier tests of this process left running
    server = serve(handle)
    try:
        urls = [f"http://127.0.0.1:{server.server_port}/test/{i}" for i in range(100)]
        the_flood = Flood(Plan(concurrency=40, duration=30), urls, lambda line: None)

        def look():
            if the_flood.counters.active == 100:
                the_flood.stop()

        final = the_flood.run(on_tick=look, tick=0.05)
    finally:
        server.stop(timeout=1)
    assert (final["active"], final["closed"]) == (100, 0)
    assert waiting["most"] == 40
    # 40 server handlers live in this process too; the flood adds only a handful
    assert waiting["greenlets"] - before < 40 + 20

"""Silent connections wait for their first bytes outside the server's pool (comet.gate).

With room for two requests at a time (``--max-handshakes 2``), three clients
that connect and say nothing must not keep a fourth from being answered, and
they are still served when they do speak. Held in the pool, the fourth would
wait in the listen backlog until --read-timeout closed the silent ones.
"""

from __future__ import annotations

import socket

from tests.realserver import RealServer


def test_silent_connections_do_not_keep_others_waiting():
    server = RealServer("--max-handshakes", "2", "--read-timeout", "60",
                        "--interval", "60").start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
                  for _ in range(3)]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as other:
            other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stream:
            stream.sendall(b"GET /events/a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
            for sock in silent:  # they speak at last, all at once: each is answered
                sock.sendall(b"POST /send/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\nhi")
            for sock in silent:
                assert sock.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
                sock.close()
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()

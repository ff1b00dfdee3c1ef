"""Tiny real servers the flood tests talk to, and a way to run the flood command against them.

Not mocks: each is a gevent StreamServer on 127.0.0.1, an ephemeral port, speaking
raw bytes, so the flood's sockets, epoll reader and decoder meet real TCP. The path
picks the behaviour, which lets one flood run meet good and broken streams together:

- ``/good/<id>``: the seed's stream: welcome chunk, then a tick chunk every 0.05 s
- ``/ts/<id>``: welcome, then one chunk carrying a ``ts=`` token, then held
- ``/end/<id>``: three chunks, the last chunk, a trailer, then it waits for the close
- ``/midchunk/<id>``: welcome, then half a chunk and the connection closes
- ``/malformed/<id>``: welcome, then a chunk size that is not hex
- ``/missing/<id>``: 404
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.subprocess
from gevent.server import StreamServer

from flood.latency import stamp

ROOT = Path(__file__).resolve().parent.parent

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(text: str) -> bytes:
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def _read_request(sock) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return b""
        buf += data
    return buf.split(b" ", 2)[1]


def _handle(sock, _addr) -> None:
    path = _read_request(sock)
    kind, _, ident = path.strip(b"/").partition(b"/")
    ident = ident.decode()
    welcome = chunk(f"comet welcomes you! Your Id: {ident}\n")
    try:
        if kind == b"good":
            sock.sendall(HEAD + welcome)
            n = 0
            while True:
                gevent.sleep(0.05)
                n += 1
                sock.sendall(chunk(f"Chunk {n} for id {ident}\n"))
        elif kind == b"ts":
            sock.sendall(HEAD + welcome + chunk(f"Recvd msg: {stamp('hello')}\n"))
        elif kind == b"end":
            sock.sendall(HEAD + welcome + chunk("a\n") + chunk("b\n") + b"0\r\nX-Done: yes\r\n\r\n")
        elif kind == b"midchunk":
            sock.sendall(HEAD + welcome + b"20\r\nonly half")
            return
        elif kind == b"malformed":
            sock.sendall(HEAD + welcome + b"zz\r\nnot a size\r\n")
        else:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        while sock.recv(4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


@contextlib.contextmanager
def chunk_server() -> Iterator[int]:
    """Serve the behaviours above on an ephemeral port; yields the port."""
    server = StreamServer(("127.0.0.1", 0), _handle, backlog=1024)
    server.start()
    try:
        yield server.server_port
    finally:
        server.stop(timeout=1)


def run_flood(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m flood`` as a real process while this process's hub keeps serving."""
    return gevent.subprocess.run([sys.executable, "-m", "flood", *args], cwd=ROOT,
                                 capture_output=True, text=True, timeout=timeout)


def write_urls(tmp_path: Path, port: int, paths: list[str]) -> str:
    path = tmp_path / "urls.txt"
    path.write_text("".join(f"http://127.0.0.1:{port}{p}\n" for p in paths))
    return str(path)


@contextlib.contextmanager
def publish_server(received: list, requests: list | None = None) -> Iterator[int]:
    """``POST /send/<id>`` answered as comet does (``{"id", "delivered": 1}``), and
    ``POST /send`` batches (``{"accepted", "delivered"}``); ids that start with ``bad``
    get a 500, so the generator's error accounting can be seen. Each message lands in
    ``received``; each request's path in ``requests`` when given."""
    import json

    from gevent.pywsgi import WSGIServer

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        body = environ["wsgi.input"].read()
        if requests is not None:
            requests.append(path)
        if path == "/send":
            batch = [json.loads(line) for line in body.splitlines() if line.strip()]
            items = [(item["id"], item["message"].encode()) for item in batch]
        else:
            items = [(path.rsplit("/", 1)[-1], body)]
        if any(ident.startswith("bad") for ident, _ in items):
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"no\n"]
        received.extend(items)
        start_response("200 OK", [("Content-Type", "application/json")])
        answer = ({"accepted": len(items), "delivered": len(items)} if path == "/send"
                  else {"id": items[0][0], "delivered": 1})
        return [json.dumps(answer).encode()]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        yield server.server_port
    finally:
        server.stop(timeout=1)


def run_module(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m <module>`` as a real process while this process's hub keeps serving."""
    return gevent.subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                                 capture_output=True, text=True, timeout=timeout)

"""A subscriber as a process of its own, for tests that stop it (SIGSTOP) as a whole.

``python -m tests.subscriberproc PORT TRANSPORT ID OUT [--rcvbuf BYTES]`` holds one
``/test/``, ``/events/`` or ``/ws/`` connection to the server on 127.0.0.1:PORT and
writes to the file OUT, a line each, flushed at once (a file, not a pipe: a pipe
nobody reads would stop an honest subscriber too):

- ``ready`` once the response head arrived;
- ``got <first word>`` for each message (a published message's first word is its
  tag; welcome, tick and heartbeat lines are not messages);
- ``ended <why>`` when the server ends the stream (the last line, then exit).

The decoding is the flood's strict one (:mod:`flood.chunked`, :mod:`flood.sse`,
:mod:`flood.ws`); WebSocket pings are answered. ``--rcvbuf`` sets the socket's
receive buffer before connecting (so the kernel does not grow it to tens of MB): a
stopped subscriber then fills up after a known number of bytes.
"""

from __future__ import annotations

import argparse
import socket
import sys

from flood import head, ws
from flood.chunked import ChunkedDecoder, DecodeError
from flood.sse import SseDecoder

PATHS = {"test": "/test/", "events": "/events/", "ws": "/ws/"}
#: what the server puts before a routed message on /test/ (comet/wire.py, test_message)
TEST_PREFIX = b"Recvd msg: "


def messages(transport: str, decoded: list[bytes]) -> list[bytes]:
    """The published messages among what the decoder gave."""
    if transport == "test":
        return [m[len(TEST_PREFIX):] for m in decoded if m.startswith(TEST_PREFIX)]
    return decoded


def run(port: int, transport: str, id: str, out, rcvbuf: int | None) -> str:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    extra = ws.request_fields() if transport == "ws" else b""
    request = head.request("127.0.0.1", port, PATHS[transport] + id, extra)
    sock.sendall(request)
    got = head.read_head(sock.recv)
    if got is None:
        return "closed before its head"
    answer, data = got
    if transport == "ws":
        ws.check_upgrade(answer, request)
        decoder = ws.WsDecoder()
    else:
        head.check_stream(answer)
        decoder = SseDecoder() if transport == "events" else ChunkedDecoder()
    out.write("ready\n")
    out.flush()
    while True:
        try:
            decoded = decoder.feed(data)
        except DecodeError as exc:
            return f"bad stream: {exc}"
        for message in messages(transport, decoded):
            out.write(f"got {message.split(b' ', 1)[0].decode()}\n")
        out.flush()
        if transport == "ws" and (replies := decoder.take_replies()):
            sock.sendall(replies)
        if decoder.done:
            return getattr(decoder, "end_reason", "last chunk")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return "reset by the server"
        if not data:
            return "closed by the server"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.subscriberproc")
    p.add_argument("port", type=int)
    p.add_argument("transport", choices=list(PATHS))
    p.add_argument("id")
    p.add_argument("out")
    p.add_argument("--rcvbuf", type=int)
    args = p.parse_args(argv)
    with open(args.out, "w") as out:
        why = run(args.port, args.transport, args.id, out, args.rcvbuf)
        out.write(f"ended {why}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the fuzzer sends: valid requests of every route, and ways to break them.

Pure and seeded: every function takes a :class:`random.Random` and gives an
:class:`Input`, bytes and how to send them, so a run's inputs are the same for
the same seed and can be replayed one by one. No sockets here (:mod:`flood.fuzz`
sends them). The corpus is one valid request per thing a client of comet does:
subscribe by SSE, chunked /test/, long-poll and WebSocket, publish one message,
a batch and a broadcast, read /stats; each kind of input starts from it or from
nothing:

``random``     arbitrary bytes, sometimes after a method and a space (some left at once)
``mutated``    a corpus request with one to four byte-level mutations (some left at once)
``handshake``  a WebSocket opening handshake with its fields dropped, doubled or bent
``frames``     a valid handshake, then frames: valid, bent, or bytes
``slow``       a corpus or mutated request sent a few bytes at a time with pauses
``truncated``  a corpus request cut short, then closed, half-closed, or left hanging
"""

from __future__ import annotations

import base64
import random
import struct
from typing import NamedTuple

KINDS = ("random", "mutated", "handshake", "frames", "slow", "truncated")

#: the ids the fuzzer's requests name (the honest clients use others)
IDS = ("fz1", "fz-2", "fz.3")

#: bytes that parsers stumble on: line ends, separators, escapes, non-ASCII, digits
#: that are not ASCII (0xB2 is "²" in a latin-1 header), numbers too big
TOKENS = (b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b"\xff", b"\xb2", b"\xc3\x28", b" ",
          b"\t", b":", b"%", b"%00", b"%ff", b"%C2%B2", b"?", b"&", b"=", b"&id=", b"@", b"~",
          b"-", b"/", b"..", b"HTTP/1", b"HTTP/1.", b"HTTP/2.0", b"-1", b"99999999999999999999",
          b"Content-Length: 99999999999\r\n", b"Content-Length: -5\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
          b"Last-Event-ID: x@y-\xb2\r\n", b"Connection: close\r\n", b"Upgrade: websocket\r\n",
          b"{", b"}", b'"', b"\\ud800", b"[" * 50, b"A" * 300)

#: what a handshake field may be bent into
ODD_VALUES = (b"", b" ", b"\xff\xfe", b"\xc3\xa9", b"-1", b"256", b"13, 8", b" 13", b"1" * 40,
              b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25jZQ=", b"!!!!!!!!!!!!!!!!!!!!!!==",
              b"\xe9" * 24, b"websocket, h2c", b"keep-alive", b"A" * 5000)


class Input(NamedTuple):
    """One connection's worth of bytes: ``pieces`` with a pause (seconds) after each,
    then ``end``: ``read`` the answer, ``close`` at once, or ``shutdown`` (half-close
    and read)."""

    kind: str
    pieces: tuple[tuple[bytes, float], ...]
    end: str = "read"

    @property
    def data(self) -> bytes:
        return b"".join(piece for piece, _ in self.pieces)


def handshake(host: str, path: str = "/ws/fz1", key: bytes | None = None) -> bytes:
    key = key or base64.b64encode(b"fuzz-nonce-16byt")
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def corpus(host: str) -> list[bytes]:
    """One valid request per thing a client does."""
    def get(path: str, extra: str = "") -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()

    def post(path: str, body: bytes, extra: str = "") -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}\r\n").encode() + body

    batch = b'{"id": "fz1", "message": "a"}\n{"id": "fz-2", "message": "b"}\n'
    return [get("/stats") + get("/health") + get("/events/fz-2"),  # pipelined
            get("/events/fz1"), get("/events/fz1?id=fz-2", "Last-Event-ID: 0-1\r\n"),
            get("/events/fz.3?last_event_id=fz1@ab-3~*@ab-4"), get("/test/fz1?id=fz.3"),
            get("/poll/fz1?since="), get("/poll/fz-2?since=abc-12&id=fz1"),
            handshake(host), handshake(host, "/ws/fz-2?id=fz1"),
            post("/send/fz1", b"hello"), post("/broadcast", b"to all"),
            post("/send", batch, "Content-Type: application/x-ndjson\r\n"),
            get("/stats"), get("/health", "Connection: close\r\n"),
            get("/", "Origin: http://example.com\r\n")]


def mutated(rng: random.Random, data: bytes) -> bytes:
    """``data`` after one to four byte-level mutations."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        how = rng.randrange(7)
        if how == 0 and out:  # flip bits of one byte
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif how == 1:
            out[at:at] = rng.choice(TOKENS)
        elif how == 2:
            del out[at:at + rng.randint(1, 16)]
        elif how == 3:
            out[at:at] = out[at:at + rng.randint(1, 64)] * rng.randint(1, 8)
        elif how == 4:
            out[at:at] = rng.randbytes(rng.randint(1, 12))
        elif how == 5 and out:
            out[min(at, len(out) - 1)] = rng.choice(b"\x00\x7f\x80\xb2\xff\r\n :%")
        else:  # swap two lines
            lines = bytes(out).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            out = bytearray(b"\r\n".join(lines))
    return bytes(out)


def _end(rng: random.Random) -> str:
    """Mostly read the answer; one time in five leave at once (the answer meets a
    closed socket: a reset, or a broken pipe)."""
    return "close" if rng.random() < 0.2 else "read"


def random_bytes(rng: random.Random) -> Input:
    data = rng.randbytes(rng.randint(1, 2000))
    if rng.random() < 0.5:
        data = rng.choice((b"GET ", b"POST ", b"GET /", b"OPTIONS ")) + data
    return Input("random", ((data, 0.0),), _end(rng))


def bent_handshake(rng: random.Random, host: str) -> Input:
    """A handshake with one to three fields dropped, doubled or given an odd value."""
    fields = [[b"Host", host.encode()], [b"Upgrade", b"websocket"],
              [b"Connection", b"Upgrade"],
              [b"Sec-WebSocket-Key", base64.b64encode(rng.randbytes(16))],
              [b"Sec-WebSocket-Version", b"13"]]
    line = [b"GET", b"/ws/" + rng.choice(IDS).encode(), b"HTTP/1.1"]
    for _ in range(rng.randint(1, 3)):
        how = rng.randrange(5)
        if how == 0 and fields:
            fields.pop(rng.randrange(len(fields)))
        elif how == 1 and fields:
            fields.append(list(rng.choice(fields)))
        elif how == 2 and fields:
            rng.choice(fields)[1] = rng.choice(ODD_VALUES)
        elif how == 3:
            line[rng.randrange(3)] = rng.choice((b"POST", b"HTTP/1.0", b"/ws/", b"/ws/a b",
                                                 b"/ws/\xff", b"HTTP/1", b""))
        else:
            field = rng.choice(fields) if fields else [b"X", b""]
            field[1] = mutated(rng, field[1])
    head = b" ".join(line) + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    return Input("handshake", ((head + b"\r\n", 0.0),))


def frame(rng: random.Random, opcode: int, payload: bytes, fin: bool = True,
          mask: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    key = rng.randbytes(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def some_frame(rng: random.Random) -> bytes:
    """A client frame: a valid one, one with a lying header, or one bent at a byte."""
    opcode = rng.choice((0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF))
    payload = rng.randbytes(rng.choice((0, 1, 2, 5, 125, 126, 300, 5000)))
    if opcode == 0x8 and len(payload) >= 2 and rng.random() < 0.7:
        payload = struct.pack("!H", rng.choice((1000, 1001, 1005, 1006, 0, 65535, 4001)))
    how = rng.randrange(5)
    if how == 0:  # a header that announces more than follows, up to 2**63
        return frame(rng, opcode, payload[:10], length=rng.choice((126, 70000, 2**63 - 1)))
    made = frame(rng, opcode, payload, fin=rng.random() < 0.8, mask=rng.random() < 0.9)
    return mutated(rng, made) if how == 1 else made


def frames(rng: random.Random, host: str) -> Input:
    pieces = [(handshake(host, "/ws/" + rng.choice(IDS)), 0.01)]
    for _ in range(rng.randint(1, 6)):
        data = some_frame(rng) if rng.random() < 0.85 else rng.randbytes(rng.randint(1, 64))
        pieces.append((data, rng.choice((0.0, 0.0, 0.005))))
    return Input("frames", tuple(pieces))


def slow(rng: random.Random, valid: list[bytes]) -> Input:
    """A request a few bytes at a time, at most ~80 pieces with pauses of up to 20 ms."""
    data = rng.choice(valid)
    if rng.random() < 0.5:
        data = mutated(rng, data)
    pieces, at = [], 0
    while at < len(data) and len(pieces) < 80:
        size = rng.randint(1, 3)
        pieces.append((data[at:at + size], rng.uniform(0.001, 0.02)))
        at += size
    if at < len(data):
        pieces.append((data[at:], 0.0))
    return Input("slow", tuple(pieces))


def truncated(rng: random.Random, valid: list[bytes]) -> Input:
    data = rng.choice(valid)
    cut = data[:rng.randrange(1, len(data))]
    return Input("truncated", ((cut, 0.0),), rng.choice(("close", "shutdown", "read")))


def inputs(seed: int, count: int, host: str) -> list[Input]:
    """``count`` inputs of every kind in turn, the same for the same seed."""
    rng = random.Random(seed)
    valid = corpus(host)
    made = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        if kind == "random":
            made.append(random_bytes(rng))
        elif kind == "mutated":
            made.append(Input("mutated", ((mutated(rng, rng.choice(valid)), 0.0),), _end(rng)))
        elif kind == "handshake":
            made.append(bent_handshake(rng, host))
        elif kind == "frames":
            made.append(frames(rng, host))
        elif kind == "slow":
            made.append(slow(rng, valid))
        else:
            made.append(truncated(rng, valid))
    return made

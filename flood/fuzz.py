"""``python -m flood.fuzz URL``: bad input at scale against a server, honest clients listening.

Sends the inputs of :mod:`flood.mutate` (random, mutated, bent handshakes and
frames, slow and truncated requests), at most ``--concurrency`` connections at
a time, while a few honest SSE subscribers listen and a publisher sends each of
them numbered messages. What it checks, and reports with how many inputs of each
kind were tried:

- no answer is a 5xx but 503 (server full or going away, which a client may get), and
  every answer's head is well formed (status line, fields);
- every message the server accepted for an honest subscriber reached it;
- with ``--log FILE`` (the server's log), no line of it written meanwhile is a
  traceback or names an exception (:func:`log_findings`);
- the server's RSS (``/stats``) after the run, once the fuzzer's connections are
  gone, against before it (after a warm-up); and that its connections and ids are
  back to the honest clients'.

Exit status 0 when nothing was found, 1 otherwise. Imports nothing of comet's.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
import gevent.pool
import gevent.socket

from flood import mutate
from flood.head import HeadError, parse_head, read_head, split_head
from flood.publisher import Publisher
from flood.sse import SseDecoder

#: seconds an input waits for the server's answers before it gives up and closes
ANSWER_WAIT = 2.0
#: seconds of silence after a complete answer that end the wait (keep-alive: no close)
QUIET = 0.3
#: bytes of an answer kept (a stream's head is all that is checked)
MAX_ANSWER = 64 * 1024
#: examples of each finding kept for the report
SAMPLES = 5
#: a log line that names an exception (ERROR, the level, is not one)
EXCEPTION = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception)\b")
#: a refusal's log line: INFO, and may name the exception that made a body unreadable
#: ("400 POST /send: line 1: not JSON (UnicodeDecodeError)")
REFUSAL = re.compile(r" INFO \S+: ")


@dataclass
class Tally:
    """What the inputs met: counts by kind, statuses, findings with samples."""

    tried: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    #: kind -> inputs the server closed (or reset) without an answer: fine, counted
    unanswered: Counter = field(default_factory=Counter)
    server_errors: list = field(default_factory=list)
    malformed: list = field(default_factory=list)

    def note(self, inp: mutate.Input, answer: bytes) -> None:
        self.tried[inp.kind] += 1
        try:
            found = statuses_in(answer)
        except HeadError as exc:
            self.malformed.append((inp.kind, str(exc), inp.data[:300]))
            return
        if not found:
            self.unanswered[inp.kind] += 1
        for status in found:
            self.statuses[status] += 1
            if status >= 500 and status != 503:
                self.server_errors.append((inp.kind, status, inp.data[:300]))


def statuses_in(answer: bytes) -> list[int]:
    """The status of every complete response head in ``answer``, up to the first stream.

    A response framed by Content-Length is skipped to the next; a 101, a chunked or
    a close-framed body ends the walk (what follows is a stream, not heads). Raises
    :class:`HeadError` for a malformed head.
    """
    found = []
    while (parts := split_head(answer)) is not None:
        head_bytes, answer = parts
        head = parse_head(head_bytes)
        found.append(head.status)
        if 100 <= head.status < 200 and head.status != 101:
            continue
        length = head.headers.get(b"content-length")
        if (head.status == 101 or length is None
                or b"chunked" in head.headers.get(b"transfer-encoding", b"").lower()):
            break
        answer = answer[int(length):]
    return found


def attempt(host: str, port: int, inp: mutate.Input) -> bytes:
    """Send one input on its own connection; what the server answered (b"" if nothing)."""
    try:
        sock = gevent.socket.create_connection((host, port), timeout=ANSWER_WAIT)
    except OSError:
        return b""
    try:
        try:
            for piece, pause in inp.pieces:
                sock.sendall(piece)
                if pause:
                    gevent.sleep(pause)
            if inp.end == "close":
                return b""
            if inp.end == "shutdown":
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading all: its answer
            pass
        return read_answer(sock)
    finally:
        sock.close()


def read_answer(sock: socket.socket) -> bytes:
    """Until the server closes, a stream's head is in, or it is quiet after an answer."""
    answer, deadline = b"", time.monotonic() + ANSWER_WAIT
    while len(answer) < MAX_ANSWER and (left := deadline - time.monotonic()) > 0:
        complete = _complete(answer)
        sock.settimeout(min(left, QUIET) if complete else left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if complete:
                break
            continue
        except OSError:
            break
        if not data:
            break
        answer += data
        if _is_stream(answer):
            break
    return answer


def _complete(answer: bytes) -> bool:
    return split_head(answer) is not None if len(answer) < MAX_ANSWER else True


def _is_stream(answer: bytes) -> bool:
    """The first answer is a stream's head (the body never ends on its own)."""
    parts = split_head(answer) if answer.startswith(b"HTTP/") else None
    if parts is None:
        return False
    head = parts[0].lower()
    return head.startswith((b"http/1.1 101", b"http/1.0 101")) or b"chunked" in head


class Honest:
    """A few SSE subscribers and one publisher sending each of them numbered messages."""

    def __init__(self, host: str, port: int, count: int, tag: str) -> None:
        self.host, self.port = host, port
        self.ids = [f"honest-{tag}-{n}" for n in range(count)]
        self.sent: dict[str, set[bytes]] = {id: set() for id in self.ids}
        self.got: dict[str, set[bytes]] = {id: set() for id in self.ids}
        self.dropped: list[str] = []
        self.refused = 0
        self._ready = Counter()
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._listen, id) for id in self.ids]
        deadline = time.monotonic() + 10
        while sum(self._ready.values()) < len(self.ids):
            if time.monotonic() > deadline or self.dropped:
                raise RuntimeError(f"honest subscribers did not start: {self.dropped}")
            gevent.sleep(0.01)
        self._greenlets.append(gevent.spawn(self._publish))

    def stop_publishing(self) -> None:
        """Stop publishing; wait up to 10 s for what was sent to arrive."""
        self._greenlets[-1].kill()
        deadline = time.monotonic() + 10
        while self.lost() and time.monotonic() < deadline and not self.dropped:
            gevent.sleep(0.05)

    def stop(self) -> None:
        gevent.killall(self._greenlets)

    def messages(self) -> int:
        return sum(len(sent) for sent in self.sent.values())

    def lost(self) -> int:
        return sum(len(self.sent[id] - self.got[id]) for id in self.ids)

    def _listen(self, id: str) -> None:
        sock = gevent.socket.create_connection((self.host, self.port), timeout=None)
        try:
            sock.sendall(f"GET /events/{id} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            got = read_head(sock.recv)
            if got is None:
                raise ConnectionError("closed before its head")
            if got[0].status != 200:
                raise ConnectionError(f"answered {got[0].status}")
            decoder, data = SseDecoder(), got[1]
            self._ready[id] = 1
            while True:
                self.got[id].update(decoder.feed(data))
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the server")
        except (OSError, ValueError) as exc:
            self.dropped.append(f"{id}: {exc}")
        finally:
            sock.close()

    def _publish(self) -> None:
        publisher, n = Publisher(self.host, self.port), 0
        while True:
            n += 1
            id = self.ids[n % len(self.ids)]
            message = f"honest {id} {n}".encode()
            try:
                status, _ = publisher.post(f"/send/{id}", message)
            except (OSError, ValueError):
                status = 0
            if status == 200:
                self.sent[id].add(message)
            else:
                self.refused += 1
            gevent.sleep(0.02)


def server_stats(host: str, port: int) -> dict:
    with gevent.socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET /stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, body = split_head(answer)
    return json.loads(body)


def log_findings(lines: list[str]) -> list[str]:
    """The server's log lines that are tracebacks, or name an exception and are no
    refusal's line."""
    return [line for line in lines if "Traceback" in line
            or (EXCEPTION.search(line) and not REFUSAL.search(line))]


@dataclass
class Report:
    seed: int
    tally: Tally
    seconds: float
    honest_messages: int
    honest_lost: int
    honest_dropped: list
    rss_before: int
    rss_after: int
    left_connections: int
    left_ids: int
    log_findings: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.tally.server_errors or self.tally.malformed or self.honest_lost
                    or self.honest_dropped or self.log_findings or self.left_connections
                    or self.left_ids)

    def lines(self) -> list[str]:
        t = self.tally
        kinds = ", ".join(f"{k} {t.tried[k]}" for k in mutate.KINDS)
        out = [f"inputs tried: {sum(t.tried.values())} ({kinds}) in {self.seconds:.1f} s, "
               f"seed {self.seed}",
               "answers by status: " + ", ".join(f"{s} {n}" for s, n in sorted(t.statuses.items())),
               "closed without an answer: " + ", ".join(f"{k} {t.unanswered[k]}"
                                                        for k in mutate.KINDS),
               f"5xx (not 503): {len(t.server_errors)}; malformed answers: {len(t.malformed)}; "
               f"log lines with a traceback or exception: {len(self.log_findings)}",
               f"honest messages: {self.honest_messages} sent, {self.honest_lost} lost; "
               f"subscribers dropped: {len(self.honest_dropped)}",
               f"server RSS: {self.rss_before / 2**20:.1f} MiB before, "
               f"{self.rss_after / 2**20:.1f} MiB after; left behind: "
               f"{self.left_connections} connections, {self.left_ids} ids"]
        for what, found in (("5xx", t.server_errors), ("malformed", t.malformed),
                            ("log", self.log_findings)):
            out += [f"  {what}: {item!r}" for item in found[:SAMPLES]]
        out += [f"  dropped: {d}" for d in self.honest_dropped[:SAMPLES]]
        return out


def run(url: str, count: int, seed: int = 1, concurrency: int = 100, honest: int = 3,
        max_seconds: float = 300.0, log_lines=None, warmup: int = 60) -> Report:
    """Fuzz the server at ``url`` with ``count`` inputs; ``log_lines()`` gives its log."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    inputs = mutate.inputs(seed, count, f"{host}:{port}")
    listeners = Honest(host, port, honest, str(seed))
    listeners.start()
    log_start = len(log_lines()) if log_lines else 0
    tally, pool = Tally(), gevent.pool.Pool(min(concurrency, 200))
    started = time.monotonic()

    def one(inp: mutate.Input) -> None:
        tally.note(inp, attempt(host, port, inp))

    for inp in inputs[:warmup]:
        pool.spawn(one, inp)
    pool.join()
    rss_before = server_stats(host, port)["rss_bytes"]
    for inp in inputs[warmup:]:
        if time.monotonic() - started > max_seconds:
            break
        pool.spawn(one, inp)
    pool.join()
    seconds = time.monotonic() - started
    listeners.stop_publishing()
    stats = _settled(host, port, honest)
    listeners.stop()
    return Report(seed, tally, seconds, listeners.messages(), listeners.lost(),
                  listeners.dropped, rss_before, stats["rss_bytes"],
                  stats["connections"]["total"] - honest, stats["ids"] - honest,
                  log_findings(log_lines()[log_start:]) if log_lines else [])


def _settled(host: str, port: int, honest: int) -> dict:
    """/stats once only the honest subscribers are held (bounded: 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        stats = server_stats(host, port)
        if stats["connections"]["total"] <= honest and stats["ids"] <= honest:
            return stats
        if time.monotonic() > deadline:
            print(f"not settled: {stats['connections']}, {stats['ids']} ids", file=sys.stderr)
            return stats
        gevent.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flood.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--inputs", type=int, default=3000, help="inputs to send (default 3000)")
    p.add_argument("--seed", type=int, default=1, help="the same seed, the same inputs")
    p.add_argument("--concurrency", type=int, default=100,
                   help="connections at a time (at most 200; default 100)")
    p.add_argument("--max-seconds", type=float, default=300.0,
                   help="stop sending new inputs after this long (default 300)")
    p.add_argument("--log", help="the server's log file: its new lines are checked")
    p.add_argument("--json", help="write the report here as JSON too")
    args = p.parse_args(argv)
    log_lines = None
    if args.log:
        def log_lines() -> list[str]:
            with open(args.log, errors="replace") as f:
                return f.read().splitlines()
    report = run(args.url, args.inputs, args.seed, args.concurrency,
                 max_seconds=args.max_seconds, log_lines=log_lines)
    print("\n".join(report.lines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": report.seed, "tried": dict(report.tally.tried),
                       "statuses": {str(k): v for k, v in report.tally.statuses.items()},
                       "server_errors": len(report.tally.server_errors),
                       "malformed": len(report.tally.malformed),
                       "log_findings": len(report.log_findings),
                       "honest_messages": report.honest_messages,
                       "honest_lost": report.honest_lost,
                       "rss_before": report.rss_before, "rss_after": report.rss_after,
                       "seconds": round(report.seconds, 1), "clean": report.clean}, f, indent=1)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())

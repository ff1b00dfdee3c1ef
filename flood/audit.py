"""Subscribers that resume, and a ledger of every message they were sent: what a fault lost.

    python -m flood.audit http://127.0.0.1:8000 --subscribers 1000 --rate 500 --for 60

The flood counts connections and chunks; it cannot say whether a message went
missing while a worker was killed, a deploy drained the server or the network
dropped packets. This can. Each subscriber is an SSE client on an id of its
own that behaves as a browser's EventSource does: when its stream ends, is
reset or cannot connect, it waits the server's latest ``retry:`` (the drain's
jittered one included) and comes back with ``Last-Event-ID``. Meanwhile one
publisher sends numbered messages to those ids in batches (``POST /send``,
newline-delimited JSON) at a steady rate, and notes each batch's outcome:

* **accepted** (200): every message in it must reach its subscriber once;
* **refused** (a 4xx, or 503 with nothing applied): none may arrive;
* **uncertain** (the connection broke or timed out before the answer, or a
  503 from a batch that may have been applied in part): it may arrive or not;
  counted apart, never as lost.

When publishing stops the audit waits (``--settle``) for the last messages,
then compares, per id, what was accepted with what arrived: **lost** (accepted,
never arrived, and no ``missed`` event told the client), **duplicates**,
**out of order**, messages the server **told** the client it could not
replay (the ``missed`` event: an honest loss, past history's bounds), and the
reconnects, with their peak per second: what a drain spread out, or not.

WebSocket and ``/test/`` frames carry no message id, so their clients cannot
resume; long-poll can (``since``) but is not audited yet. Exit status 1 when
anything accepted was lost silently or arrived twice.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.socket

from flood import head as heads
from flood import publishkey
from flood.chunked import ChunkedDecoder, DecodeError
from flood.connect import close_reason
from flood.publisher import Publisher
from flood.urls import BadUrl, parse_url

log = logging.getLogger("flood.audit")

#: what an EventSource waits before its first reconnection, until the server says
DEFAULT_RETRY = 3.0
#: a subscriber that cannot connect waits longer each time, up to this (seconds)
MOST_RETRY = 10.0
#: seconds between the publisher's batches
TICK = 0.1
#: seconds a subscriber waits for bytes before it counts its stream as stalled and reconnects
#: (longer than any heartbeat it is told to expect)
STALL = 60.0
#: why a stream that was held ended (any other reason: it never got going)
HELD_ENDS = ("stream ended", "closed mid-stream", "Connection reset by peer", "stalled")
#: the data of the messages that check an id is routed before publishing starts
PROBE = "probe"
#: subscribers started a second, in steps of RAMP_STEP
RAMP, RAMP_STEP = 2000, 100
#: probes in one batch publish: far below a server's --max-batch bytes
PROBES_PER_BATCH = 1000
#: an event's fields, as the WHATWG parser reads them (CR LF and CR are not sent by comet)
_FIELD = re.compile(rb"^([^:\n]*):? ?(.*)$", re.M)


@dataclass
class Ledger:
    """One id: what was sent to it and what its subscriber got."""

    accepted: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)
    received: collections.Counter = field(default_factory=collections.Counter)
    out_of_order: int = 0
    last: int = -1
    missed_events: int = 0
    probed: bool = False  #: a probe arrived: the server routes this id's messages to it

    def got(self, seq: int) -> None:
        if seq < self.last:
            self.out_of_order += 1
        self.last = max(self.last, seq)
        self.received[seq] += 1

    def complete(self) -> bool:
        return self.accepted.issubset(self.received)


@dataclass
class Report:
    subscribers: int = 0
    accepted: int = 0
    refused: int = 0
    uncertain: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0  #: arrived, but from a batch the server refused
    told_missed: int = 0
    missed_events: int = 0
    reconnects: int = 0
    reconnect_peak_per_s: int = 0
    reconnects_per_s: list[int] = field(default_factory=list)
    ends: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0

    def lines(self) -> list[str]:
        return [
            f"subscribers {self.subscribers}, {self.seconds:.1f} s",
            f"messages accepted {self.accepted}, refused {self.refused}, "
            f"uncertain {self.uncertain}",
            f"delivered {self.delivered}: lost {self.lost}, duplicates {self.duplicates}, "
            f"out of order {self.out_of_order}, unexpected {self.unexpected}, "
            f"told missed {self.told_missed} "
            f"({self.missed_events} missed events)",
            f"reconnects {self.reconnects}, peak {self.reconnect_peak_per_s}/s",
            "streams ended: " + (", ".join(f"{k} {v}" for k, v in sorted(self.ends.items()))
                                 or "none"),
            "verdict: " + ("nothing lost, nothing doubled" if self.clean else "LOSS"),
        ]


class Subscriber:
    """One EventSource-like client on ``id``: reads, resumes, and feeds its ledger."""

    def __init__(self, audit: Audit, id: str) -> None:
        self.audit, self.id = audit, id
        self.ledger = audit.ledgers[id]
        self.last_id: str | None = None
        self.retry = DEFAULT_RETRY
        self.opened = 0

    def run(self) -> None:
        failures = 0
        while not self.audit.stopping.is_set():
            reason = self._stream()
            self.audit.ended(reason)
            # After a stream that ended, the server's retry (a drain's is jittered);
            # after a failure to connect, that doubled each time, as browsers back off.
            failures = 0 if reason in HELD_ENDS else failures + 1
            wait = min(self.retry * 2 ** max(0, failures - 1), max(self.retry, MOST_RETRY))
            if self.audit.stopping.wait(wait):
                return

    def _stream(self) -> str:
        """One connection, until it ends; the reason it ended."""
        audit = self.audit
        sock = None
        try:
            sock = gevent.socket.create_connection((audit.host, audit.port), timeout=10)
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            sock.sendall(heads.request(audit.host, audit.port, f"/events/{self.id}",
                                       (resume + audit.auth).encode("latin-1")))
            answer = heads.read_head(sock.recv)
            if answer is None:
                return "closed before the head"
            head, rest = answer
            if head.status != 200:
                after = head.headers.get(b"retry-after", b"")
                if after.isdigit():
                    self.retry = max(self.retry, float(after))
                return f"status {head.status}"
            heads.check_stream(head)
            if self.opened:
                audit.reconnected()
            self.opened += 1
            sock.settimeout(STALL)
            return self._read(sock, rest)
        except TimeoutError:
            return "stalled"
        except (OSError, heads.HeadError, DecodeError) as exc:
            return close_reason(exc)
        finally:
            if sock is not None:
                sock.close()

    def _read(self, sock, rest: bytes) -> str:
        decoder, pending = ChunkedDecoder(), b""
        data = rest
        while True:
            for chunk in decoder.feed(data):
                pending += chunk
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    self._event(event)
            if decoder.done:
                return "stream ended"
            if self.audit.stopping.is_set():
                return "audit over"
            data = sock.recv(65536)
            if not data:
                return "closed mid-stream"

    def _event(self, block: bytes) -> None:
        fields = dict(m.groups() for m in _FIELD.finditer(block) if m.group(1))
        if b"retry" in fields and fields[b"retry"].isdigit():
            self.retry = int(fields[b"retry"]) / 1000
        if b"id" in fields:
            self.last_id = fields[b"id"].decode("utf-8", "replace")
        if fields.get(b"event") == b"missed":
            self.ledger.missed_events += 1
        elif b"data" in fields and b"event" not in fields:
            data = fields[b"data"].split(b":", 1)[0]
            if data.isdigit():
                self.ledger.got(int(data))
            elif data == PROBE.encode():
                self.ledger.probed = True
            # else: not one of ours (a broadcast by someone else)


class Audit:
    """The subscribers, the publisher, and their shared ledgers for one run."""

    def __init__(self, url: str, subscribers: int, rate: float, prefix: str = "audit",
                 key: str | None = None, settle: float = 30.0, size: int = 0) -> None:
        dest = parse_url(url.rstrip("/") + "/")
        self.host, self.port = dest.host, dest.port
        self.auth = publishkey.header_fields(key).decode("latin-1")
        self.ids = [f"{prefix}-{i}" for i in range(subscribers)]
        self.ledgers = {id: Ledger() for id in self.ids}
        self.rate, self.settle = rate, settle
        #: each message is its number, then ``:`` and padding up to ``size`` bytes
        self.padding = ":" + "x" * max(0, size - 8) if size else ""
        self.stopping = gevent.event.Event()
        self.report = Report(subscribers=subscribers)
        self._reconnects: collections.Counter = collections.Counter()
        self._started = time.monotonic()
        self._publisher = Publisher(self.host, self.port, timeout=10.0,
                                    headers=publishkey.header_fields(key))

    # -- what subscribers tell ---------------------------------------------------------

    def reconnected(self) -> None:
        self.report.reconnects += 1
        self._reconnects[int(time.monotonic() - self._started)] += 1

    def ended(self, reason: str) -> None:
        if reason != "audit over":
            self.report.ends[reason] = self.report.ends.get(reason, 0) + 1

    # -- the run -----------------------------------------------------------------------

    def run(self, seconds: float, during=None) -> Report:
        """Subscribe all, publish for ``seconds`` (calling ``during()`` once, in its own
        greenlet, when publishing starts: the fault, or the line that tells a test to
        make one), settle, and count."""
        self._started = time.monotonic()
        subs = [Subscriber(self, id) for id in self.ids]
        readers = []
        for n, sub in enumerate(subs):  # a ramp, not one storm of SYNs the server queues
            readers.append(gevent.spawn(sub.run))
            if n % RAMP_STEP == RAMP_STEP - 1:
                gevent.sleep(RAMP_STEP / RAMP)
        self._wait_subscribed(subs)
        fault = gevent.spawn(during) if during else None
        self._publish_for(seconds)
        deadline = time.monotonic() + self.settle
        while (time.monotonic() < deadline
               and not all(led.complete() for led in self.ledgers.values())):
            gevent.sleep(0.2)
        self.stopping.set()
        if fault is not None:
            fault.join()
        gevent.killall(readers, timeout=15)  # each blocked in a read: GreenletExit ends it
        self._publisher.close()
        return self._count(time.monotonic() - self._started)

    def _wait_subscribed(self, subs: list[Subscriber], timeout: float = 60.0) -> None:
        """Publishing starts once every subscriber is routed: a message sent before
        would be one its first connection never asked for. A held stream is not yet
        routed everywhere (a Redis subscription is confirmed after the head), so each
        id gets probe messages, again every half second, until its subscriber has one."""
        deadline = time.monotonic() + timeout
        while waiting := [s for s in subs if not (s.opened and s.ledger.probed)]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting)} subscribers not reached in {timeout:g} s")
            ready = [s.id for s in waiting if s.opened]
            for start in range(0, len(ready), PROBES_PER_BATCH):
                body = b"".join(json.dumps({"id": id, "message": PROBE}).encode() + b"\n"
                                for id in ready[start:start + PROBES_PER_BATCH])
                try:
                    self._publisher.post("/send", body, b"application/x-ndjson")
                except (OSError, heads.HeadError, DecodeError):
                    pass  # the next round sends again
            gevent.sleep(0.5)

    def _publish_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        seqs = collections.Counter()
        cursor, owed = 0, 0.0
        while time.monotonic() < end:
            owed += self.rate * TICK
            batch = []
            while owed >= 1:
                id = self.ids[cursor % len(self.ids)]
                cursor += 1
                owed -= 1
                batch.append((id, seqs[id]))
                seqs[id] += 1
            if batch:
                self._send(batch)
            gevent.sleep(TICK)

    def _send(self, batch: list[tuple[str, int]]) -> None:
        body = b"".join(json.dumps({"id": id, "message": f"{seq}{self.padding}"}).encode()
                        + b"\n" for id, seq in batch)
        try:
            status, _ = self._publisher.post("/send", body, b"application/x-ndjson")
        except ConnectionRefusedError:  # at connect: nothing was sent
            status = 0
        except (OSError, heads.HeadError, DecodeError):  # maybe after the server took it
            status = None
        if status == 200:
            outcome, self.report.accepted = "accepted", self.report.accepted + len(batch)
        elif status is None or status >= 500:
            outcome, self.report.uncertain = "uncertain", self.report.uncertain + len(batch)
        else:
            self.report.refused += len(batch)
            return
        for id, seq in batch:
            getattr(self.ledgers[id], outcome).add(seq)

    def _count(self, seconds: float) -> Report:
        report = self.report
        report.seconds = seconds
        for led in self.ledgers.values():
            arrived = set(led.received)
            report.delivered += sum(led.received.values())
            report.duplicates += sum(n - 1 for n in led.received.values() if n > 1)
            report.out_of_order += led.out_of_order
            report.missed_events += led.missed_events
            gone = led.accepted - arrived
            if led.missed_events:  # told: the client knows it missed these
                report.told_missed += len(gone)
            else:
                report.lost += len(gone)
            report.unexpected += len(arrived - led.accepted - led.uncertain)
        if self._reconnects:
            last = max(self._reconnects)
            report.reconnects_per_s = [self._reconnects.get(s, 0) for s in range(last + 1)]
            report.reconnect_peak_per_s = max(self._reconnects.values())
        return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flood.audit",
        description="Resuming SSE subscribers and a ledger of every message sent to them: "
                    "run it beside a fault (a killed worker, a deploy, a lossy network) "
                    "and it says what was lost.")
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--subscribers", type=int, default=1000, help="one id each (default 1000)")
    p.add_argument("--rate", type=float, default=500.0,
                   help="messages a second, spread over the ids (default 500)")
    p.add_argument("--for", dest="seconds", type=float, default=30.0,
                   help="seconds of publishing (default 30)")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds to wait afterwards for the last messages (default 30)")
    p.add_argument("--size", type=int, default=0,
                   help="bytes per message, padded after its number (default: the number)")
    p.add_argument("--prefix", default="audit", help="ids are PREFIX-0, PREFIX-1, ...")
    p.add_argument("--publish-key-file", help="a publisher key for a server that needs one "
                   f"(or ${publishkey.ENV})")
    p.add_argument("--json", help="write the report here as JSON")
    args = p.parse_args(argv)
    if args.subscribers < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--subscribers, --rate and --for must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        key = publishkey.client_key(args.publish_key_file)
        audit = Audit(args.url, args.subscribers, args.rate, args.prefix, key, args.settle,
                      args.size)
        report = audit.run(args.seconds, during=lambda: print(
            f"publishing: {args.subscribers} subscribers routed; {args.rate:g} messages "
            f"a second for {args.seconds:g} s", flush=True))
    except (ValueError, BadUrl, RuntimeError) as exc:
        print(f"flood.audit: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**report.__dict__, "clean": report.clean}, out, indent=1)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())

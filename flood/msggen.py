"""``python -m flood.msggen``: the series' part 2 message generator.

Sends ``POST /send/<id>`` at a target rate to ids drawn by popularity (:mod:`flood.ids`),
over keep-alive HTTP: ``--concurrency`` sender greenlets, each with one connection per
port (:class:`flood.publisher.Publisher`, a fraction of what ``http.client`` in threads
or ``requests`` cost a message), so that the publisher does not set the rate it
measures. With ``--batch N``, up to N due messages go in one ``POST /send``
(newline-delimited JSON). Every message
carries its send time (``ts=...``, :func:`flood.latency.stamp`) so a flood reading the
streams measures delivery latency. It reports sent/s, errors by kind and what the
server answered (how many connections each message reached). A server that needs a
publisher key gets one from ``--publish-key-file`` or ``$COMET_PUBLISH_KEY_FOR_CLIENT``
(:mod:`flood.publishkey`).

Pacing: message k is due at ``start + k / rate``; one pacer greenlet hands due messages
to the senders, so the rate is never exceeded. If the senders fall behind, the
achieved rate says so. Ids map to ports as :mod:`flood.urls` spreads them, so
``--ports`` reaches the server process that holds each id's stream.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.queue

from flood.bagraph import barabasi_albert
from flood.ids import Popularity, parse_ids
from flood.latency import stamp
from flood.publisher import DecodeError, HeadError, Publisher
from flood.publishkey import ENV, client_key, header_fields
from flood.report import write_json
from flood.social import load_into_redis, load_through_api
from flood.urls import BadUrl, parse_ports, parse_url


@dataclass
class Tally:
    """What the senders did (greenlets: no lock, nothing yields while it is updated)."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    delivered: int = 0  #: sum of the server's ``delivered`` answers
    subscribers: int = 0  #: notify: sum of the server's ``subscribers`` answers (the fan-out)
    #: notify, one a request: how many notifies reached each number of followers
    fan_out: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    error_kinds: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        result = {"sent": self.sent, "ok": self.ok, "errors": self.errors,
                  "delivered": self.delivered, "statuses": dict(self.statuses),
                  "error_kinds": dict(self.error_kinds)}
        if self.fan_out or self.subscribers:
            result["subscribers"] = self.subscribers
            result["fan_out"] = fan_out_summary(self.fan_out, self.subscribers, self.ok)
        return result


def fan_out_summary(counts: Counter, subscribers: int, notifies: int) -> dict:
    """Followers per notify: the mean always; percentiles when every notify was answered
    alone (a bulk answer sums its lines: some requests alone would be a skewed sample)."""
    summary = {"mean": round(subscribers / notifies, 2) if notifies else None}
    total = sum(counts.values())
    if total and total == notifies:
        ranked = sorted(counts.items())
        for name, share in (("p50", 0.5), ("p99", 0.99)):
            seen, rank = 0, share * total
            for value, n in ranked:
                seen += n
                if seen >= rank:
                    summary[name] = value
                    break
        summary["max"] = ranked[-1][0]
    return summary


class Generator:
    """Paces messages and sends them from ``concurrency`` greenlets."""

    def __init__(self, base: str, ids: list[str], rate: float, skew: float = 0.0,
                 ports: list[int] | None = None, concurrency: int = 16, timeout: float = 5.0,
                 seed: int | None = None, text: str = "msg", batch: int = 1,
                 key: str | None = None, action: str = "send") -> None:
        target = parse_url(base.rstrip("/") + "/")
        self.host = f"[{target.host}]" if ":" in target.host else target.host
        self.ports = ports or [target.port]
        self.ids = ids
        self.index = {ident: i for i, ident in enumerate(ids)}
        self.rate = rate
        self.popularity = Popularity(ids, skew, seed)
        self.concurrency = concurrency
        self.timeout = timeout
        self.text = text
        #: messages one request may carry: 1 sends POST /send/<id>, more a POST /send batch
        self.batch = batch
        #: ``send`` (to the id's connections) or ``notify`` (to its followers'): the path
        self.action = action
        #: header lines every request carries: the publisher key, when there is one
        self._headers = header_fields(key)
        self.tally = Tally()
        self.stopped = gevent.event.Event()
        self._queue: gevent.queue.Queue = gevent.queue.Queue(maxsize=concurrency * 2 * batch)

    def url_for(self, ident: str) -> str:
        """Where one message to ``ident`` is posted (``POST /send/<id>``, or /notify/)."""
        return f"http://{self.host}:{self.port_of(ident)}/{self.action}/{ident}"

    def _pace(self, duration: float | None) -> None:
        start = time.time()
        end = start + duration if duration is not None else float("inf")
        k = 0
        while not self.stopped.is_set():
            due = start + k / self.rate
            if due >= end or time.time() >= end:
                break  # on time even when the senders fell behind the schedule
            delay = due - time.time()
            if delay > 0 and self.stopped.wait(delay):
                break
            ident = self.popularity.pick()
            self._queue.put((k, ident))
            k += 1
        for _ in range(self.concurrency):
            self._queue.put(None)

    def port_of(self, ident: str) -> int:
        """Same id-to-port spread as ``flood.urls --ports``: rank modulo the port count."""
        return self.ports[self.index[ident] % len(self.ports)]

    def _due(self) -> list | None:
        """The next due message, and with ``--batch`` those already due behind it."""
        item = self._queue.get()
        if item is None:
            return None
        items = [item]
        while len(items) < self.batch:
            try:
                more = self._queue.get_nowait()
            except gevent.queue.Empty:
                break
            if more is None:
                self._queue.put(None)  # the end: for this sender's next turn
                break
            items.append(more)
        return items

    def _send_loop(self) -> None:
        connections: dict[int, Publisher] = {}
        while (items := self._due()) is not None:
            if self.batch == 1:
                k, ident = items[0]
                self._send(connections, self.port_of(ident), f"/{self.action}/{ident}",
                           stamp(f"{self.text} {k} to {ident}").encode(), None, 1)
                continue
            by_port: dict[int, list] = {}
            for k, ident in items:
                by_port.setdefault(self.port_of(ident), []).append((k, ident))
            for port, group in by_port.items():
                body = b"".join(json.dumps({"id": ident, "message": stamp(
                    f"{self.text} {k} to {ident}")}).encode() + b"\n" for k, ident in group)
                self._send(connections, port, f"/{self.action}", body,
                           b"application/x-ndjson", len(group))
        for conn in connections.values():
            conn.close()

    def _send(self, connections: dict, port: int, path: str, body: bytes,
              content_type: bytes | None, count: int) -> None:
        """One request carrying ``count`` messages, on this sender's connection to
        ``port`` (opened again after a failure); the tally counts messages."""
        conn = connections.get(port)
        if conn is None:
            conn = connections[port] = Publisher(self.host.strip("[]"), port, self.timeout,
                                                       self._headers)
        try:
            status, raw = conn.post(path, body, content_type)
            answer = _json_or_none(raw)
            kind = None if status == 200 else f"HTTP {status}"
        except (OSError, HeadError, DecodeError) as exc:
            status, answer, kind = None, None, _kind(exc)
        tally = self.tally
        tally.sent += count
        if status is not None:
            tally.statuses[str(status)] += count
        if kind is None:
            tally.ok += count
            if isinstance(answer, dict):
                tally.delivered += int(answer.get("delivered", 0) or 0)
                if "subscribers" in answer:
                    followers = int(answer["subscribers"] or 0)
                    tally.subscribers += followers
                    if count == 1:
                        tally.fan_out[followers] += 1
        else:
            tally.errors += count
            tally.error_kinds[kind] += count

    def run(self, duration: float | None, report: float, out=print) -> dict:
        """Send until ``duration`` ends or :meth:`stop`; print a line every ``report`` s."""
        started = time.time()
        pacer = gevent.spawn(self._pace, duration)
        senders = [gevent.spawn(self._send_loop) for _ in range(self.concurrency)]
        last_sent, last_t = 0, started
        while not all(sender.dead for sender in senders):
            gevent.joinall(senders, timeout=min(report, 0.2))
            now = time.time()
            if now - last_t >= report:
                sent = self.tally.sent
                out(self.line(sent, (sent - last_sent) / (now - last_t)))
                last_sent, last_t = sent, now
        pacer.join()
        for sender in senders:
            if sender.exception is not None:
                raise sender.exception
        elapsed = time.time() - started
        result = self.tally.as_dict()
        result.update(elapsed_s=round(elapsed, 3), target_rate=self.rate,
                      achieved_rate=round(result["sent"] / elapsed, 2) if elapsed else None)
        out(self.line(result["sent"], result["achieved_rate"] or 0.0, final=True))
        return result

    def line(self, sent: int, rate: float, final: bool = False) -> str:
        t = self.tally
        kinds = ", ".join(f"{k}: {n}" for k, n in t.error_kinds.most_common(3))
        fan_out = (f" fan-out {t.subscribers / t.ok:.1f}" if self.action == "notify" and t.ok
                   else "")
        return (f"{'Total' if final else 'Sent'}: {sent} ({rate:.1f}/s of {self.rate:g}/s) "
                f"errors {t.errors}{' (' + kinds + ')' if kinds else ''} "
                f"delivered {t.delivered}{fan_out}")

    def stop(self) -> None:
        self.stopped.set()


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


def _kind(exc: Exception) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, OSError):
        return "connection error"
    if isinstance(exc, (HeadError, DecodeError)):
        return "bad answer"
    return exc.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flood.msggen",
                                description="Send timestamped messages to ids at a rate.")
    p.add_argument("--base", default="http://127.0.0.1:8000", help="server (default %(default)s)")
    p.add_argument("--ports", help="spread ids over these ports as flood.urls does: 8001-8006")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second (default 10)")
    p.add_argument("--ids", help="ids: 1-10000 or a,b,c (default 1-10000; with --graph "
                                 "the graph's users)")
    p.add_argument("--skew", type=float, default=0.0,
                   help="popularity exponent: 0 uniform, 1 Zipf (default 0)")
    p.add_argument("--duration", type=float, help="seconds, then stop (default: until Ctrl-C)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="senders, each with its own connection per port (default 16)")
    p.add_argument("--report", type=float, default=1.0, help="seconds between lines (default 1)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable id sequence")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="messages per request: up to N due ones in one POST /send (or "
                        "/notify), newline-delimited JSON (default 1: one a request)")
    p.add_argument("--json", metavar="FILE", help="write the totals here")
    p.add_argument("--publish-key-file", metavar="PATH",
                   help=f"publish with the first key in this file (default: ${ENV} if set, "
                        "else no key); never a key on the command line")
    social = p.add_argument_group("the series' part 3: notify along a friends graph")
    social.add_argument("--notify", action="store_true",
                        help="POST /notify/<id>: each message goes to the id's followers")
    social.add_argument("--graph", type=int, metavar="USERS",
                        help="draw a Barabási-Albert friends graph of users 1..USERS, load "
                             "it (--load), then notify for random users of it")
    social.add_argument("--links", type=int, default=15, metavar="M",
                        help="ids each new user follows, by preferential attachment "
                             "(default 15)")
    social.add_argument("--graph-seed", type=int, default=0,
                        help="the graph's seed: the same seed, the same graph (default 0)")
    social.add_argument("--load", choices=("api", "redis", "none"), default="api",
                        help="api: POST /subscribe per user (any broker); redis: straight "
                             "into the servers' Redis with comet.graphload; none: loaded "
                             "already (default api)")
    social.add_argument("--load-concurrency", type=int, default=16,
                        help="connections loading through the API (default 16)")
    social.add_argument("--load-only", action="store_true",
                        help="load the graph and stop, sending nothing")
    social.add_argument("--graph-out", metavar="FILE",
                        help="write the graph (comet.graphload's lines) here and stop")
    social.add_argument("--redis", metavar="URL",
                        help="for --load redis (default $COMET_REDIS)")
    social.add_argument("--redis-cluster", action="store_true",
                        help="for --load redis: the URL is a Redis Cluster node")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.concurrency < 1 or args.report <= 0 or args.batch < 1:
        p.error("--rate, --concurrency, --report and --batch must be positive")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    graph = None
    if args.graph is not None:
        if args.ids is not None:
            p.error("--graph notifies for its own users; leave out --ids")
        if args.ports:
            p.error("--graph needs one server (workers behind one port share the graph)")
        try:
            graph = barabasi_albert(args.graph, args.links, args.graph_seed)
        except ValueError as exc:
            p.error(f"--graph: {exc}")
        if args.graph_out:
            write_lines(args.graph_out, graph)
            print(f"graph: {graph.summary()} written to {args.graph_out}")
            return 0
        args.notify = True
    ids = args.ids or (f"1-{args.graph}" if graph is not None else "1-10000")
    try:
        key = client_key(args.publish_key_file)
        gen = Generator(args.base, parse_ids(ids), args.rate, args.skew,
                        parse_ports(args.ports) if args.ports else None,
                        args.concurrency, args.timeout, args.seed, batch=args.batch,
                        key=key, action="notify" if args.notify else "send")
    except (ValueError, BadUrl) as exc:
        p.error(str(exc))
    prelude: dict = {}
    if graph is not None:
        prelude["graph"] = graph.summary()
        out(f"graph: {prelude['graph']}")
        try:
            prelude["load"] = load_graph(args, gen, graph, header_fields(key), out)
        except (RuntimeError, ValueError) as exc:
            print(f"flood.msggen: {exc}", file=sys.stderr)
            return 1
        out(f"load: {prelude['load']}")
        if args.load_only:
            if args.json:
                write_json(args.json, {"command": ["flood.msggen", *(argv or sys.argv[1:])],
                                       "result": prelude})
            return 0
    # Ctrl-C: stop pacing; the senders finish what is queued, then the totals print
    gevent.signal_handler(signal.SIGINT, gen.stop)
    result = gen.run(args.duration, args.report, out=out)
    if args.json:
        write_json(args.json, {"command": ["flood.msggen", *(argv or sys.argv[1:])],
                               "result": {**prelude, **result}})
    return 0 if result["ok"] else 1


def load_graph(args: argparse.Namespace, gen: Generator, graph, headers: bytes,
               out: Callable[[str], None]) -> dict:
    """Put the drawn graph where the server reads it (``--load``); what it took."""
    if args.load == "none":
        return {"via": "none"}
    if args.load == "redis":
        url = args.redis or os.environ.get("COMET_REDIS")
        if not url:
            raise ValueError("--load redis needs --redis URL or $COMET_REDIS")
        return load_into_redis(graph, url, args.redis_cluster)
    result = load_through_api(graph, gen.host.strip("[]"), gen.ports[0], headers,
                              args.load_concurrency, out=out)
    if result["errors"] or set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"loading through the API failed: {result}")
    return result


def write_lines(path: str, graph) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.writelines(graph.lines())


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

"""The Redis broker (``--redis URL``): many processes and machines, one history, no sticky sessions.

How it maps comet onto Redis, as Centrifugo and nchan do (the keys and the
scripts: :mod:`comet.broker.redisscripts`):

* **Delivery.** One channel per id. A process SUBSCRIBEs an id's channel
  when its first connection logs in as it and UNSUBSCRIBEs when the last one
  leaves; the ids that a crowd of new connections brings within one turn of
  the event loop go out as one SUBSCRIBE. One pub/sub connection per
  process, read by one greenlet, which hands each message to the hub's
  ``deliver``; broadcasts have a channel of their own. A login waits until
  Redis has confirmed its ids' subscriptions, so a message published after a
  client saw its opening is never missed.
* **Publishing.** One script appends the message to the id's stream and
  PUBLISHes it, atomically, after giving it the next offset of the one
  counter: so every process sees the same ``<epoch>-<offset>``, and a
  message that reaches nobody is still in history.
* **Resuming** anywhere: the replay script reads the streams of a client's
  ids and the broadcast stream after its last offset and says whether some
  are lost (trimmed, expired, or an epoch Redis no longer has).
* **Redis lost.** Publishing answers :class:`BrokerUnavailable` (the app's
  503), the hub admits no new subscriber, held connections stay. The reader
  reconnects with backoff and jitter, resubscribes every id in batches, and
  before it reads anything new replays each id's stream after the last
  offset this process received, so each connection gets what it missed,
  once (its ``seen`` drops what it has); ids whose history no longer covers
  the gap, or all of them when the epoch changed, are handed to the hub's
  ``lost`` so their connections end and resume (and get ``missed``).

redis-py does the protocol, on gevent sockets (:mod:`comet.broker.redisconn`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence

import gevent
import gevent.event
import gevent.lock
import redis
from redis.connection import ConnectionPool
from redis.exceptions import RedisError

from comet.broker import BrokerUnavailable, Deliver, Message, Replay, redacted
from comet.broker.redisconn import connection_options
from comet.broker.redisscripts import (
    BROADCAST,
    PUBLISH,
    REPLAY,
    SETUP,
    channel,
    epoch_candidate,
    position_key,
    publish_arguments,
    stream_key,
)

log = logging.getLogger(__name__)

#: Redis commands in flight at once from one process (publishes, replays)
POOL_SIZE = 32
#: channels per SUBSCRIBE / UNSUBSCRIBE command
SUBSCRIBE_BATCH = 1000
#: ids per pipeline when a reconnect replays every id's gap
REPLAY_BATCH = 500
#: seconds between PINGs on the pub/sub connection; twice this without a reply is a loss
PING_INTERVAL = 5.0
#: reconnect backoff: first wait and cap, in seconds (each wait gets +-50% jitter)
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0

Lost = Callable[[Sequence[str] | None], None]


class _Waiter(gevent.event.Event):
    """A login waiting for Redis to confirm the subscriptions of some ids."""

    __slots__ = ("pending",)

    def __init__(self, ids) -> None:
        super().__init__()
        self.pending = set(ids)


class RedisBroker:
    """The :class:`~comet.broker.Broker` over Redis: pub/sub for delivery, streams for history."""

    spans_processes = True
    vector = False

    def __init__(self, url: str, *, history: int = 100, history_ttl: float = 300.0,
                 prefix: str = "comet", timeout: float = 5.0, wait: float = 0.0) -> None:
        self.url = url
        self.where = redacted(url)
        self.prefix = prefix
        self.history = history
        self.ttl = max(1, math.ceil(history_ttl))
        self.timeout = timeout
        #: seconds start() keeps trying while Redis cannot be reached (0: fail at once)
        self.wait = wait
        try:
            options = connection_options(url, socket_timeout=timeout,
                                         socket_connect_timeout=timeout)
        except (ValueError, TypeError, KeyError) as exc:
            raise BrokerUnavailable(f"cannot use the Redis URL {self.where}: {exc}") from None
        #: the URL's max_connections, else ours: Redis commands in flight at once
        pool_size = int(options.pop("max_connections", POOL_SIZE))
        # RESP2 on the pub/sub connection: messages are plain replies there, read in
        # order with the subscription confirmations (RESP3 would make them pushes).
        self._pubsub_options = {**options, "socket_timeout": 2 * PING_INTERVAL, "protocol": 2}
        self._client = redis.Redis(connection_pool=ConnectionPool(
            max_connections=pool_size, **options))
        #: greenlets beyond the pool wait here, cooperatively, for a connection
        self._slots = gevent.lock.BoundedSemaphore(pool_size)
        self._publish = self._client.register_script(PUBLISH)
        self._replay = self._client.register_script(REPLAY)
        self._setup = self._client.register_script(SETUP)
        self._pos = position_key(prefix)
        self._broadcast_stream = stream_key(prefix, BROADCAST)
        self._broadcast_channel = channel(prefix, BROADCAST).encode()
        self._channel_head = f"{prefix}:{{".encode()
        self._deliver: Deliver | None = None
        self._lost: Lost = lambda ids: None
        #: the epoch of the history this process knows; a different one means Redis lost it
        self.epoch: str | None = None
        #: the highest offset handed to deliver: where a reconnect's replay starts
        self._received = 0
        # Subscriptions: one big set, what the hub wants; the others are small and
        # short-lived: what is still to send, and what Redis has not confirmed yet.
        self._wanted: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._unconfirmed: set[str] = set()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._flushing = False
        self._pubsub = None
        self._write_lock = gevent.lock.Semaphore()
        self._reader: gevent.Greenlet | None = None
        self._pinger: gevent.Greenlet | None = None
        self._closed = False
        #: True while the pub/sub connection is subscribed and read
        self.up = False
        self.stats = {"reconnects": 0, "resubscribed_ids": 0, "gap_messages": 0,
                      "gap_lost_ids": 0, "epoch_changes": 0, "publish_failures": 0}

    # -- the Broker protocol --------------------------------------------------------

    def start(self, deliver: Deliver, lost: Lost | None = None) -> None:
        """Reach Redis (or raise :class:`BrokerUnavailable`), subscribe broadcasts, read."""
        self._deliver = deliver
        if lost is not None:
            self._lost = lost
        deadline = time.monotonic() + self.wait
        while True:
            try:
                epoch, seq = self._record_bounds()
                self.epoch, self._received = epoch.decode(), int(seq)
                self._connect_pubsub()
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(f"cannot reach Redis at {self.where}: {exc} "
                                            "(--redis-wait SECONDS keeps trying at start)"
                                            ) from None
                log.warning("waiting for Redis at %s: %s", self.where, exc)
                gevent.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self.up = True
        log.info("Redis broker at %s (epoch %s)", self.where, self.epoch)
        self._reader = gevent.spawn(self._read_forever)
        self._pinger = gevent.spawn(self._ping_forever)

    def subscribe(self, ids: Sequence[str]) -> None:
        """Deliver ``ids``' messages here from now on; returns once Redis confirmed it."""
        for id in ids:
            if id in self._wanted:
                continue
            self._wanted.add(id)
            if id in self._to_unsubscribe:
                self._to_unsubscribe.discard(id)  # never sent: Redis still has it
            else:
                self._to_subscribe.add(id)
        waiting = [id for id in ids if id in self._to_subscribe or id in self._unconfirmed]
        if not waiting:
            return
        if not self.up:
            raise BrokerUnavailable(f"Redis at {self.where} is unreachable")
        waiter = _Waiter(waiting)
        for id in waiting:
            self._waiters.setdefault(id, []).append(waiter)
        self._schedule_flush()
        if not waiter.wait(self.timeout):
            for id in waiter.pending:
                held = self._waiters.get(id)
                if held and waiter in held:
                    held.remove(waiter)
            raise BrokerUnavailable(f"Redis at {self.where} did not confirm a subscription "
                                    f"within {self.timeout:g} s")

    def unsubscribe(self, ids: Sequence[str]) -> None:
        for id in ids:
            if id not in self._wanted:
                continue
            self._wanted.discard(id)
            if id in self._to_subscribe:
                self._to_subscribe.discard(id)  # never sent
            else:
                self._to_unsubscribe.add(id)
        if self._to_unsubscribe:
            self._schedule_flush()

    def publish(self, id: str, data: bytes) -> tuple[Message, None]:
        return self._run_publish([(id, data)])[0]

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, None]]:
        """Many publishes in one round trip (a pipeline of the script), in order."""
        return self._run_publish(list(items))

    def broadcast(self, data: bytes) -> tuple[Message, None]:
        return self._run_publish([(BROADCAST, data)])[0]

    def replay(self, ids: Sequence[str], last: str | None) -> Replay:
        streams = [stream_key(self.prefix, id) for id in ids] + [self._broadcast_stream]
        try:
            with self._slots:
                answer = self._replay_call(streams, last)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis at {self.where}: {exc}") from None
        return _replay_of(answer)

    def position(self) -> str:
        try:
            with self._slots:
                answer = self._replay_call([], None)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis at {self.where}: {exc}") from None
        return f"{answer[0].decode()}-{int(answer[1])}"

    def close(self) -> None:
        """Stop reading and pinging; never blocks (it may run in the event loop's callback)."""
        self._closed = True
        self.up = False
        for greenlet in (self._pinger, self._reader):
            if greenlet is not None:
                greenlet.kill(block=False)  # the reader lets go of its connection as it ends
        if self._reader is None:
            self._drop_pubsub()
        # In a greenlet: the pool takes a lock, which must never be waited for in the
        # event loop's own callback (gunicorn's stop signal runs the shutdown there).
        gevent.spawn(self._client.connection_pool.disconnect)

    # -- what /stats and /health show -------------------------------------------------

    def snapshot(self) -> dict:
        return {"kind": "redis", "url": self.where, "up": self.up, "epoch": self.epoch,
                "subscribed_ids": self.subscribed(), **self.stats}

    def subscribed(self) -> int:
        """Ids whose subscription Redis has confirmed (and not been asked to undo)."""
        return len(self._wanted) - len(self._to_subscribe) - len(self._unconfirmed)

    # -- publishing -----------------------------------------------------------------

    def _run_publish(self, items: list[tuple[str, bytes]]) -> list[tuple[Message, None]]:
        """One script call for the lot: their offsets in order, each kept and PUBLISHed."""
        keys, args = publish_arguments(self.prefix, items)
        try:
            with self._slots:
                answer = self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self.stats["publish_failures"] += 1
            raise BrokerUnavailable(f"Redis at {self.where}: {exc}") from None
        epoch = answer[0].decode()
        return [(Message(epoch, int(seq), data), None)
                for seq, (_, data) in zip(answer[1:], items, strict=True)]

    def _record_bounds(self) -> tuple[bytes, bytes]:
        """Tell Redis this server's history bounds (a backend's publish follows them);
        its epoch and last offset, made if it has none."""
        return self._setup(keys=[self._pos], args=[epoch_candidate(), self.history, self.ttl])

    def _replay_call(self, streams: list[str], last: str | None, client=None):
        epoch, offset = _split(last)
        return self._replay(keys=[self._pos, *streams], args=[epoch_candidate(), epoch, offset],
                            client=client)

    # -- subscriptions ----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            gevent.spawn(self._flush)

    def _flush(self) -> None:
        """Send what logins and logouts asked for since the last flush, in batches."""
        try:
            while self._to_subscribe or self._to_unsubscribe:
                subscribe, self._to_subscribe = self._to_subscribe, set()
                unsubscribe, self._to_unsubscribe = self._to_unsubscribe, set()
                if self._pubsub is None:
                    continue  # down: the reconnect subscribes whatever is wanted then
                self._unconfirmed |= subscribe
                try:
                    self._send("SUBSCRIBE", subscribe)
                    self._send("UNSUBSCRIBE", unsubscribe)
                except (RedisError, OSError) as exc:
                    log.warning("subscribing at %s failed: %s", self.where, exc)
                    return  # the reader sees the loss too and resubscribes all
        finally:
            self._flushing = False

    def _send(self, command: str, ids) -> None:
        ids = list(ids)
        for start in range(0, len(ids), SUBSCRIBE_BATCH):
            channels = [channel(self.prefix, id) for id in ids[start:start + SUBSCRIBE_BATCH]]
            with self._write_lock:
                if self._pubsub is None:
                    raise redis.ConnectionError("pub/sub connection lost")
                self._pubsub.send_command(command, *channels, check_health=False)

    def _confirmed(self, kind: bytes, chan: bytes) -> None:
        id = self._id_of(chan)
        if id is None:
            return
        if kind == b"subscribe":
            self._unconfirmed.discard(id)
            for waiter in self._waiters.pop(id, ()):
                waiter.pending.discard(id)
                if not waiter.pending:
                    waiter.set()

    def _id_of(self, chan: bytes) -> str | None:
        if chan == self._broadcast_channel or not chan.startswith(self._channel_head):
            return None
        return chan[len(self._channel_head):-3].decode()

    # -- the pub/sub connection -------------------------------------------------------

    def _connect_pubsub(self) -> None:
        """A new pub/sub connection subscribed to broadcasts (confirmed)."""
        conn = self._pubsub_options["connection_class"](
            **{k: v for k, v in self._pubsub_options.items() if k != "connection_class"})
        conn.connect()
        conn.send_command("SUBSCRIBE", self._broadcast_channel, check_health=False)
        reply = conn.read_response()
        if reply[0] != b"subscribe":
            conn.disconnect()
            raise redis.ConnectionError(f"unexpected answer to SUBSCRIBE: {reply[0]!r}")
        self._pubsub = conn

    def _drop_pubsub(self) -> None:
        conn, self._pubsub = self._pubsub, None
        if conn is not None:
            conn.disconnect()

    def _read_forever(self) -> None:
        """Read the pub/sub connection; when it breaks, reconnect and catch up, forever."""
        try:
            self._read_and_reconnect()
        finally:
            self._drop_pubsub()

    def _read_and_reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while not self._closed:
            try:
                self._read_until_broken()
            except (RedisError, OSError, ValueError) as exc:  # ValueError: closed under it
                if self._closed:
                    return
                if self.up:
                    log.warning("lost Redis at %s: %s; held connections stay, publishing "
                                "answers 503 until it is back", self.where, exc)
                self.up = False
                self._drop_pubsub()
            while not self._closed and not self.up:
                gevent.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(BACKOFF_CAP, delay * 2)
                try:
                    self._reconnect()
                    delay = BACKOFF_FIRST
                except (RedisError, OSError) as exc:
                    log.debug("Redis at %s still unreachable: %s", self.where, exc)
                    self._drop_pubsub()

    def _read_until_broken(self) -> None:
        read = self._pubsub.read_response
        while True:
            self._on_reply(read())

    def _on_reply(self, reply, held: list | None = None) -> None:
        kind = reply[0]
        if kind == b"message":
            if held is not None:
                held.append(reply)
            else:
                self._on_message(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            self._confirmed(kind, reply[1])

    def _on_message(self, chan: bytes, payload: bytes) -> None:
        epoch, seq, data = payload.split(b" ", 2)
        seq = int(seq)
        epoch = epoch.decode()
        if epoch != self.epoch:
            self._epoch_changed(epoch)
        elif seq <= self._received:
            return  # a reconnect's replay already delivered it
        self._received = seq
        if chan == self._broadcast_channel:
            self._deliver(None, Message(epoch, seq, data))
            return
        id = self._id_of(chan)
        if id in self._wanted:  # not one whose UNSUBSCRIBE is still on its way
            self._deliver(id, Message(epoch, seq, data))

    def _epoch_changed(self, epoch: str) -> None:
        log.warning("Redis lost its history (epoch %s is now %s): every connection here "
                    "ends so that its client resumes and learns what it missed",
                    self.epoch, epoch)
        self.epoch = epoch
        self._received = 0
        self.stats["epoch_changes"] += 1
        self._lost(None)

    def _ping_forever(self) -> None:
        """PING the pub/sub connection so that a Redis that stopped answering is noticed."""
        while not self._closed:
            gevent.sleep(PING_INTERVAL)
            if self.up and self._pubsub is not None:
                try:
                    with self._write_lock:
                        self._pubsub.send_command("PING", check_health=False)
                except (RedisError, OSError):
                    pass  # the reader sees it

    def _reconnect(self) -> None:
        """Subscribe everything again, then replay what this process missed, then go on."""
        epoch, _ = self._record_bounds()
        self._connect_pubsub()
        ids = sorted(self._wanted)
        self._unconfirmed = set(ids)
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        held: list = []
        read = self._pubsub.read_response
        for start in range(0, len(ids), SUBSCRIBE_BATCH):
            batch = ids[start:start + SUBSCRIBE_BATCH]
            self._send("SUBSCRIBE", batch)
            while any(id in self._unconfirmed for id in batch):
                self._on_reply(read(), held)
        self.stats["reconnects"] += 1
        self.stats["resubscribed_ids"] += len(ids)
        epoch = epoch.decode()
        if epoch != self.epoch:
            self._epoch_changed(epoch)
        else:
            self._replay_gap(ids)
        self.up = True
        log.warning("Redis at %s is back: %d ids resubscribed", self.where, len(ids))
        for reply in held:
            self._on_message(reply[1], reply[2])
        if self._to_subscribe or self._to_unsubscribe:
            self._schedule_flush()

    def _replay_gap(self, ids: list[str]) -> None:
        """Deliver, oldest first, what each id and the broadcasts got after ``_received``."""
        last = f"{self.epoch}-{self._received}"
        found: list[tuple[int, str | None, Message]] = []
        lost: list[str] = []
        for start in range(0, len(ids) + 1, REPLAY_BATCH):
            batch: list[str | None] = list(ids[start:start + REPLAY_BATCH])
            if start + REPLAY_BATCH > len(ids):
                batch.append(None)  # and the broadcasts, once
            pipe = self._client.pipeline(transaction=False)
            for id in batch:
                stream = self._broadcast_stream if id is None else stream_key(self.prefix, id)
                self._replay_call([stream], last, client=pipe)
            for id, answer in zip(batch, pipe.execute(), strict=True):
                replay = _replay_of(answer)
                if replay.missed:
                    lost.append(id)
                found.extend((m.seq, id, m) for m in replay.messages)
        found.sort(key=lambda entry: entry[0])
        for seq, id, message in found:
            self._received = max(self._received, seq)
            self._deliver(id, message)
        self.stats["gap_messages"] += len(found)
        if lost:
            self.stats["gap_lost_ids"] += len(lost)
            log.warning("history no longer covers what %d ids missed while Redis was away",
                        len(lost))
            self._lost(None if None in lost else [id for id in lost if id is not None])


def _split(last: str | None) -> tuple[str, str]:
    """A client's last id as (epoch, offset) for the replay script; ('', '0') if none."""
    if last:
        head, _, tail = last.strip().rpartition("-")
        if head and tail.isdigit() and len(tail) <= 18:
            return head, tail
    return "", "0"


def _replay_of(answer: list) -> Replay:
    epoch = answer[0].decode()
    messages = [Message(epoch, int(answer[i]), answer[i + 1]) for i in range(4, len(answer), 2)]
    return Replay(messages, answer[2] == 1, f"{epoch}-{int(answer[3])}")

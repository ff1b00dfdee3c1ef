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
from collections.abc import Callable, Sequence

import gevent
import gevent.lock
import redis
from redis.connection import ConnectionPool
from redis.exceptions import RedisError

from comet.broker import BrokerUnavailable, Deliver, Held, Message, Replay
from comet.broker.coalesce import Coalescer
from comet.broker.cursor import offset_of
from comet.broker.pubsublink import PING_INTERVAL, SUBSCRIBE_WAIT, PubSubLink, Waiters
from comet.broker.redisbase import RedisBrokerBase, advise_stream_nodes, read_replay
from comet.broker.redisgraph import RedisGraph
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

#: channels per SUBSCRIBE / UNSUBSCRIBE command
SUBSCRIBE_BATCH = 1000
#: ids per pipeline when a reconnect replays every id's gap
REPLAY_BATCH = 500

Lost = Callable[[Sequence[str] | None], None]


class _Link(PubSubLink):
    """The broker's one pub/sub connection: SUBSCRIBE in batches, replies to the broker."""

    def __init__(self, broker: RedisBroker, options: dict) -> None:
        super().__init__(broker.where, options, lambda: broker.held(), broker._waiters)
        self.broker = broker

    def send(self, command: str, ids) -> None:
        ids = list(ids)
        prefix = self.broker.prefix
        for start in range(0, len(ids), SUBSCRIBE_BATCH):
            channels = [channel(prefix, id) for id in ids[start:start + SUBSCRIBE_BATCH]]
            self.write((command.upper(), *channels))

    def on_reply(self, reply) -> None:
        self.broker._on_reply(reply)

    def recover(self) -> None:
        self.broker._reconnect()


class RedisBroker(RedisBrokerBase):
    """The :class:`~comet.broker.Broker` over Redis: pub/sub for delivery, streams for history."""

    vector = False

    def __init__(self, url: str, **settings) -> None:
        super().__init__(url, **settings)
        pool_size, options = self.pool_size, self.options
        self._client = redis.Redis(connection_pool=ConnectionPool(
            max_connections=pool_size, **options))
        #: greenlets beyond the pool wait here, cooperatively, for a connection
        self._slots = gevent.lock.BoundedSemaphore(pool_size)
        #: who follows whom (/subscribe, /notify), in Redis sets every process shares
        self.graph = RedisGraph(lambda: self._client, self._slots, self.prefix, self.where)
        self._publish = self._client.register_script(PUBLISH)
        #: one publish call in flight; what comes meanwhile goes together in the next
        self._publish_call = Coalescer(self._run_publish)
        self._replay = self._client.register_script(REPLAY)
        self._setup = self._client.register_script(SETUP)
        self._pos = position_key(self.prefix)
        self._broadcast_stream = stream_key(self.prefix, BROADCAST)
        self._broadcast_channel = channel(self.prefix, BROADCAST).encode()
        self._channel_head = f"{self.prefix}:{{".encode()
        self._deliver: Deliver | None = None
        self._lost: Lost = lambda ids: None
        #: the ids this process holds (the hub's router says)
        self.held: Held = tuple
        #: the epoch of the history this process knows; a different one means Redis lost it
        self.epoch: str | None = None
        #: the highest offset handed to deliver: where a reconnect's replay starts
        self._received = 0
        self._waiters = Waiters()
        #: the pub/sub connection and the ids it holds
        self._link = _Link(self, self.pubsub_options)
        self._pinger: gevent.Greenlet | None = None
        self.stats = {"reconnects": 0, "resubscribed_ids": 0, "gap_messages": 0,
                      "gap_lost_ids": 0, "epoch_changes": 0, "publish_failures": 0}

    # -- the Broker protocol --------------------------------------------------------

    def start(self, deliver: Deliver, lost: Lost | None = None,
              held: Held | None = None) -> None:
        """Reach Redis (or raise :class:`BrokerUnavailable`), subscribe broadcasts, read."""
        self._deliver = deliver
        if lost is not None:
            self._lost = lost
        if held is not None:
            self.held = held
        def attempt() -> None:
            epoch, seq = self._record_bounds()
            self.epoch, self._received = epoch.decode(), int(seq)
            self._connect_pubsub()

        self.reach(attempt, "Redis")
        log.info("Redis broker at %s (epoch %s)", self.where, self.epoch)
        advise_stream_nodes(self._client.config_get, self.where)
        self._link.start_reading()
        self._pinger = gevent.spawn(self._ping_forever)

    @property
    def up(self) -> bool:
        """True while the pub/sub connection is subscribed and read."""
        return self._link.up

    def subscribe(self, ids: Sequence[str], new: Sequence[str]) -> None:
        """Deliver ``ids``' messages here from now on; returns once Redis confirmed it."""
        link = self._link
        for id in new:
            link.want(id)
        waiting = [id for id in ids if link.pending(id)]
        if not waiting:
            return
        if not link.up:
            raise BrokerUnavailable(f"Redis at {self.where} is unreachable")
        link.schedule_flush()
        if not self._waiters.wait(waiting):
            raise BrokerUnavailable(f"Redis at {self.where} did not confirm a subscription "
                                    "(lost, or not within "
                                    f"{SUBSCRIBE_WAIT:g} s)")

    def unsubscribe(self, ids: Sequence[str]) -> None:
        for id in ids:
            self._link.unwant(id)
        self._link.schedule_flush()

    def publish(self, id: str, data: bytes) -> tuple[Message, None]:
        return self._publish_call([(id, data)])[0]

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, None]]:
        """Many publishes in one script call, in order."""
        return self._publish_call(items)

    def broadcast(self, data: bytes) -> tuple[Message, None]:
        return self._publish_call([(BROADCAST, data)])[0]

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
        if self._pinger is not None:
            self._pinger.kill(block=False)
        self._link.close()
        # In a greenlet: the pool takes a lock, which must never be waited for in the
        # event loop's own callback (gunicorn's stop signal runs the shutdown there).
        gevent.spawn(self._client.connection_pool.disconnect)

    # -- what /stats and /health show -------------------------------------------------

    def snapshot(self) -> dict:
        return {"kind": "redis", "url": self.where, "up": self.up, "epoch": self.epoch,
                "subscribed_ids": self.subscribed(), **self.stats,
                "pubsub_lag_seconds": self.pubsub_lag,
                "publish_calls": self._publish_call.calls,
                "published": self._publish_call.items}

    def subscribed(self) -> int:
        """Ids whose subscription Redis has confirmed (and not been asked to undo)."""
        return self._link.confirmed_count()

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

    def _confirmed(self, kind: bytes, chan: bytes) -> None:
        id = self._id_of(chan)
        if id is not None and kind == b"subscribe":
            self._link.unconfirmed.discard(id)
            self._waiters.confirmed(id)

    def _id_of(self, chan: bytes) -> str | None:
        if chan == self._broadcast_channel or not chan.startswith(self._channel_head):
            return None
        return chan[len(self._channel_head):-3].decode()

    # -- the pub/sub connection -------------------------------------------------------

    def _connect_pubsub(self) -> None:
        """A new pub/sub connection subscribed to broadcasts (confirmed)."""
        conn = self._link.open()
        conn.send_command("SUBSCRIBE", self._broadcast_channel, check_health=False)
        reply = conn.read_response()
        if reply[0] != b"subscribe":
            conn.disconnect()
            raise redis.ConnectionError(f"unexpected answer to SUBSCRIBE: {reply[0]!r}")
        self._link.conn = conn

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
        self.read_from_pubsub(seq)
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
        # only ids still held here: one whose UNSUBSCRIBE is on its way (or not yet
        # sent) may still get a message, which must not reach the hub as if it were
        if id is not None and id in self.held():
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
        while not self._link.closed:
            gevent.sleep(PING_INTERVAL)
            self._link.ping()

    def _reconnect(self) -> None:
        """Subscribe everything again, then replay what this process missed, then go on."""
        link = self._link
        epoch, _ = self._record_bounds()
        self._connect_pubsub()
        ids = link.resubscribe_all()
        held: list = []
        read = link.conn.read_response
        for start in range(0, len(ids), SUBSCRIBE_BATCH):
            batch = ids[start:start + SUBSCRIBE_BATCH]
            link.send("subscribe", batch)
            while any(id in link.unconfirmed for id in batch):
                self._on_reply(read(), held)
        self.stats["reconnects"] += 1
        self.stats["resubscribed_ids"] += len(ids)
        epoch = epoch.decode()
        if epoch != self.epoch:
            self._epoch_changed(epoch)
        else:
            self._replay_gap(ids)
        link.up = True
        log.warning("Redis at %s is back: %d ids resubscribed", self.where, len(ids))
        for reply in held:
            self._on_message(reply[1], reply[2])
        link.schedule_flush()

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
        if head and offset_of(tail) is not None:
            return head, tail
    return "", "0"


def _replay_of(answer: list) -> Replay:
    read = read_replay(answer)
    return Replay(read.messages, read.missed, f"{read.epoch}-{read.after}")

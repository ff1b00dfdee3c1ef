"""The Redis Cluster broker (``--redis URL --redis-cluster``): sharded pub/sub, per id history.

The single-Redis broker (:mod:`comet.broker.redis`) carried over to a cluster,
with what a cluster changes:

* **Keys and channels.** An id's stream ``<prefix>:{<id>}:h`` and channel
  ``<prefix>:{<id>}:c`` share a slot through the hash tag, which is the whole id:
  ids spread over the slots as evenly as their hashes do (a short tag, such as
  a prefix of the id, would crowd them; centrifuge#554). Broadcasts are the
  pseudo-id ``*``: kept once, on one node.
* **Delivery.** Sharded pub/sub (SSUBSCRIBE, SPUBLISH; Redis 7): a message goes
  only to the node of its slot, so pub/sub scales with the shards. One pub/sub
  connection per primary node (:class:`_Shard`), read by one greenlet, holding
  the ids of the slots that node serves. SSUBSCRIBE takes channels of one slot
  per command, so a crowd's ids go out as one command per slot, all written at
  once.
* **Positions are per stream.** A script may touch one slot only, so there is no
  counter for all ids: each stream has its own epoch and offsets
  (:data:`~comet.broker.redisscripts.SHARD_PUBLISH`), and a client's position
  is a vector, one element per stream it reads (:mod:`comet.broker.cursor`);
  every connection keeps its own, which also drops anything delivered twice.
* **Slots move.** When a slot moves to another node (resharding, failover),
  the node unsubscribes its channels (``sunsubscribe``) or answers MOVED; the
  broker reloads the cluster's layout, subscribes the ids at their new node,
  and replays from their streams what may have been published meanwhile
  (connections drop what they have already).
* **A node lost.** Publishing to its slots answers :class:`BrokerUnavailable`
  (a 503), ``/health`` answers 503, held connections stay. Its shard reconnects
  with backoff and jitter, resubscribes, and replays each id's stream after
  the last offset it received from that node; a node that restarted (a new run
  id) may have lost its data, so the connections of its ids end and resume,
  and each stream's epoch tells their clients whether something is missed.

redis-py's :class:`redis.RedisCluster` does the routing of commands (slots,
MOVED, ASK), on gevent sockets (:mod:`comet.broker.redisconn`); its pipelines
refuse scripts, so a batch runs as one plain pipeline per node, the nodes at
once. Its TRYAGAIN and CLUSTERDOWN handling sleeps with :func:`time.sleep`,
which would stop every greenlet: :func:`_cooperative_sleeps` gives its module
gevent's sleep.
"""

from __future__ import annotations

import logging
import random
import time
import types
from collections.abc import Callable, Sequence

import gevent
import gevent.event
import gevent.lock
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from comet.broker import BrokerUnavailable, Deliver, Message, Replay
from comet.broker.coalesce import Coalescer
from comet.broker.cursor import AT, ELEMENTS, parse
from comet.broker.pubsublink import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    PING_INTERVAL,
    SUBSCRIBE_WAIT,
    PubSubLink,
    Waiters,
)
from comet.broker.redisbase import RedisBrokerBase, read_replay
from comet.broker.redisgraph import RedisGraph
from comet.broker.redisscripts import (
    BROADCAST,
    SEQ_PER_MS,
    SHARD_PUBLISH,
    SHARD_REPLAY,
    bounds_key,
    channel,
    epoch_candidate,
    stream_key,
)

log = logging.getLogger(__name__)

#: how far before the last offset received from a node a catch-up replay starts: a
#: stream's offsets may run ahead of the node's clock (more than 1024 messages in a
#: millisecond), so one stream's last may be above another's next; connections drop
#: what they already have
CATCH_UP_MARGIN = 1000 * SEQ_PER_MS
#: ids per batch of replays after a reconnect or a move
REPLAY_BATCH = 500

Lost = Callable[[Sequence[str] | None], None]


def _cooperative_sleeps() -> None:
    """redis-py's cluster client sleeps on TRYAGAIN and CLUSTERDOWN with time.sleep,
    which would stop the whole process here (no monkey-patching): its module gets a
    ``time`` whose sleep is gevent's. Only redis.cluster's own name is changed."""
    if not isinstance(redis.cluster.time, types.SimpleNamespace):
        redis.cluster.time = types.SimpleNamespace(
            **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
        redis.cluster.time.sleep = gevent.sleep


class _Shard(PubSubLink):
    """One primary node: its pub/sub connection and the ids subscribed there."""

    def __init__(self, broker: RedisClusterBroker, host: str, port: int) -> None:
        super().__init__(f"{host}:{port}", {**broker.pubsub_options, "host": host, "port": port},
                         lambda: [id for id, shard in broker._home.items() if shard is self],
                         broker._waiters)
        self.broker = broker
        #: the node's run id when last connected: another one means it restarted
        self.run_id: str | None = None
        #: the highest offset received from this node (where a catch-up starts)
        self.received = 0
        #: set once the first connection was tried (logins wait for it, not open their own)
        self.ready = gevent.event.Event()

    def connect(self) -> bool:
        """Open the pub/sub connection; learn the node's run id and clock (a first
        catch-up point). True if the node restarted since the last connection. Raises
        RedisError or OSError."""
        conn = self.open()
        try:
            conn.send_command("INFO", "server", check_health=False)
            info = conn.read_response()
            conn.send_command("TIME", check_health=False)
            seconds, micros = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        text = info.decode() if isinstance(info, bytes) else str(info)
        run_id = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                       if line.startswith("run_id:")), None)
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if not self.received:
            self.received = (int(seconds) * 1000 + int(micros) // 1000) * SEQ_PER_MS
        self.conn = conn
        return restarted

    def send(self, command: str, ids) -> None:
        """One command per slot (a sharded subscription's channels share one), all
        written at once."""
        by_slot: dict[int, list[str]] = {}
        for id in ids:
            chan = channel(self.broker.prefix, id)
            by_slot.setdefault(key_slot(chan.encode()), []).append(chan)
        if by_slot:
            name = "SSUBSCRIBE" if command == "subscribe" else "SUNSUBSCRIBE"
            self.write(*((name, *chans) for chans in by_slot.values()))

    def on_reply(self, reply) -> None:
        kind = reply[0]
        broker = self.broker
        if kind == b"smessage":
            broker.on_message(self, reply[1], reply[2])
        elif kind == b"ssubscribe":
            broker.confirmed(self, reply[1])
        elif kind == b"sunsubscribe":
            id = broker.id_of(reply[1])
            if broker._home.get(id) is self and id not in self.to_subscribe:
                # not one we let go: the node gave up its slot (a move)
                broker.rehome(self, [id])

    def lost_reply(self, exc: Exception) -> bool:
        """MOVED (or another refusal) for an SSUBSCRIBE: its ids go where they are now."""
        log.info("Redis node %s refused a subscription: %s", self.name, exc)
        self.broker.rehome(self, list(self.unconfirmed))
        return True

    def recover(self) -> None:
        self.broker.recover(self)


class RedisClusterBroker(RedisBrokerBase):
    """The :class:`~comet.broker.Broker` over a Redis Cluster: sharded pub/sub, per id
    streams, positions per stream."""

    vector = True

    def __init__(self, url: str, **settings) -> None:
        super().__init__(url, **settings)
        if "path" in self.options:
            raise BrokerUnavailable(f"a Redis Cluster is reached over TCP, not {self.where}")
        self.options.pop("db", None)  # a cluster has db 0 only
        self.pubsub_options.pop("db", None)
        self._client: redis.RedisCluster | None = None
        self._slots = gevent.lock.BoundedSemaphore(self.pool_size)
        #: who follows whom, in Redis sets under one hash tag (comet.broker.redisgraph)
        self.graph = RedisGraph(lambda: self._client, self._slots, self.prefix, self.where)
        #: one publish call in flight; what comes meanwhile goes together in the next
        self._publish_call = Coalescer(self._publish_now)
        self._deliver: Deliver | None = None
        self._lost: Lost = lambda ids: None
        self._shards: dict[str, _Shard] = {}
        #: the shard each id held here is subscribed on (the broadcasts' too)
        self._home: dict[str, _Shard] = {}
        self._waiters = Waiters()
        self._channel_head = f"{self.prefix}:{{".encode()
        self._pinger: gevent.Greenlet | None = None
        self._closed = False
        self.stats = {"moved_ids": 0, "resubscribed_ids": 0, "gap_messages": 0,
                      "gap_lost_ids": 0, "publish_failures": 0, "node_restarts": 0}

    # -- the Broker protocol --------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the cluster answers and every shard with ids is read."""
        return (self._client is not None and not self._closed
                and all(shard.up for shard in self._shards.values() if shard.ready.is_set()))

    def start(self, deliver: Deliver, lost: Lost | None = None, held=None) -> None:
        """Reach the cluster (or raise :class:`BrokerUnavailable`), subscribe broadcasts."""
        _cooperative_sleeps()
        self._deliver = deliver
        if lost is not None:
            self._lost = lost
        def attempt() -> None:
            # retry: none of its own on a lost node (the caller answers 503 at once);
            # MOVED and ASK are followed all the same
            self._client = redis.RedisCluster.from_url(
                self.url, connection_class=self.options["connection_class"],
                max_connections=self.pool_size, retry=Retry(NoBackoff(), 0),
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
            try:
                self._publish_script = self._client.register_script(SHARD_PUBLISH)
                self._replay_script = self._client.register_script(SHARD_REPLAY)
                self._client.hset(bounds_key(self.prefix),
                                  mapping={"history": self.history, "ttl": self.ttl})
                self._want(BROADCAST)
            except BaseException:
                self._client = None
                raise

        self.reach(attempt, "the Redis Cluster")
        self._wait_confirmed([BROADCAST])
        self._pinger = gevent.spawn(self._ping_forever)
        log.info("Redis Cluster broker at %s (%d primaries)", self.where,
                 len(self._client.get_primaries()))

    def subscribe(self, ids: Sequence[str], new: Sequence[str]) -> None:
        """Deliver ``ids``' messages here from now on; returns once their nodes confirmed.
        (Which node holds each id is this broker's own map, so ``new`` is not needed.)"""
        if not self.up:
            raise BrokerUnavailable(f"the Redis Cluster at {self.where} is unreachable")
        try:
            for id in ids:
                if id not in self._home:
                    self._want(id)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis Cluster at {self.where}: {exc}") from None
        self._wait_confirmed(ids)

    def unsubscribe(self, ids: Sequence[str]) -> None:
        for id in ids:
            shard = self._home.pop(id, None)
            if shard is not None:
                shard.unwant(id)
                shard.schedule_flush()

    def publish(self, id: str, data: bytes) -> tuple[Message, None]:
        return self._publish_call([(id, data)])[0]

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, None]]:
        return self._publish_call(items)

    def _publish_now(self, items: list[tuple[str, bytes]]) -> list[tuple[Message, None]]:
        """Each message by its stream's script; one pipeline per node, the nodes at once."""
        calls = [(id, [epoch_candidate(), channel(self.prefix, id), data,
                       self.history, self.ttl]) for id, data in items]
        try:
            answers = self._run(self._publish_script, calls)
        except BrokerUnavailable:
            self.stats["publish_failures"] += 1
            raise
        return [(Message(answer[0].decode(), int(answer[1]), data, stream=id), None)
                for answer, (id, data) in zip(answers, items, strict=True)]

    def broadcast(self, data: bytes) -> tuple[Message, None]:
        return self._publish_call([(BROADCAST, data)])[0]

    def replay(self, ids: Sequence[str], last: str | None) -> Replay:
        """Each stream's messages after the client's element for it; ``start`` is the
        vector the replay begins from. ``last`` None: where a new login begins."""
        streams = [*ids, BROADCAST]
        elements = parse(last) if last is not None else {}
        garbage = elements is None  # not a vector: as if of another epoch, everywhere
        calls = []
        for stream in streams:
            if garbage:
                position = ("#", "0", "1")
            elif stream in elements:
                epoch, seq = elements[stream]
                position = (epoch, str(seq), "1")
            else:
                position = ("", "0", "0")  # a stream the client did not read: from now
            calls.append((stream, [*position, self.history, self.ttl]))
        answers = self._run(self._replay_script, calls)
        found: list[Message] = []
        missed = False
        start = []
        for stream, answer in zip(streams, answers, strict=True):
            read = read_replay(answer, stream)
            missed = missed or read.missed
            start.append(f"{stream}{AT}{read.epoch}-{read.after}")
            found.extend(read.messages)
        found.sort(key=lambda m: m.seq)
        return Replay(found, missed, ELEMENTS.join(start))

    def position(self) -> str:
        raise NotImplementedError("positions are per stream in a cluster: see replay()")

    def close(self) -> None:
        self._closed = True
        if self._pinger is not None:
            self._pinger.kill(block=False)
        for shard in list(self._shards.values()):
            shard.close()
        if self._client is not None:
            gevent.spawn(self._client.close)

    # -- what /stats and /health show -------------------------------------------------

    def snapshot(self) -> dict:
        return {"kind": "redis-cluster", "url": self.where, "up": self.up,
                "subscribed_ids": self.subscribed(),
                "shards": {name: {"up": shard.up, "ids": shard.count,
                                  "reconnects": shard.reconnects}
                           for name, shard in self._shards.items()},
                "reconnects": sum(shard.reconnects for shard in self._shards.values()),
                "pubsub_lag_seconds": self.pubsub_lag,
                **self.stats, "publish_calls": self._publish_call.calls,
                "published": self._publish_call.items}

    def subscribed(self) -> int:
        """Ids whose subscriptions their nodes have confirmed (broadcasts not counted)."""
        confirmed = sum(shard.confirmed_count() for shard in self._shards.values())
        return confirmed - (BROADCAST in self._home)

    # -- running scripts --------------------------------------------------------------

    def _run(self, script, calls: list[tuple[str, list]]) -> list:
        """``script`` for each ``(id, args)`` on its id's stream, in order per id: one
        pipeline per node, all nodes at once; a call its node refuses (the slot moved)
        again through the cluster client, which follows MOVED and ASK."""
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"the Redis Cluster at {self.where} is unreachable")
        by_node: dict[str, list[int]] = {}
        try:
            for index, (id, _) in enumerate(calls):
                node = client.get_node_from_key(stream_key(self.prefix, id))
                by_node.setdefault(node.name, []).append(index)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis Cluster at {self.where}: {exc}") from None
        answers: list = [None] * len(calls)

        def run_on(name: str, indexes: list[int]) -> None:
            # EVALSHA as plain commands: a pipeline given the Script would first ask
            # SCRIPT EXISTS, a round trip per batch; a node without it says NOSCRIPT
            with self._slots:
                pipe = client.get_redis_connection(client.get_node(node_name=name)).pipeline(
                    transaction=False)
                for index in indexes:
                    id, args = calls[index]
                    pipe.execute_command("EVALSHA", script.sha, 1,
                                         stream_key(self.prefix, id), *args)
                for index, answer in zip(indexes, pipe.execute(raise_on_error=False),
                                         strict=True):
                    answers[index] = answer
            for index in indexes:  # refused (moved, moving, no script): in order, through
                if isinstance(answers[index], ResponseError):  # the client, which copes
                    id, args = calls[index]
                    with self._slots:
                        answers[index] = script(keys=[stream_key(self.prefix, id)], args=args)

        try:
            if len(by_node) == 1:
                run_on(*next(iter(by_node.items())))
            else:
                jobs = [gevent.spawn(run_on, name, indexes) for name, indexes in by_node.items()]
                gevent.joinall(jobs, raise_error=True)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis Cluster at {self.where}: {exc}") from None
        return answers

    # -- subscriptions ----------------------------------------------------------------

    def _shard_for(self, id: str) -> _Shard:
        """The shard of the node serving ``id``'s slot, connected (made if new: the
        logins that ask for it meanwhile wait for that one connection)."""
        node = self._client.get_node_from_key(channel(self.prefix, id))
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(self, node.host, node.port)
            try:
                shard.connect()
            except BaseException:
                if self._shards.get(node.name) is shard:
                    del self._shards[node.name]
                raise
            finally:
                shard.ready.set()
            shard.start_reading()
        elif not shard.ready.is_set():
            shard.ready.wait(self.timeout)
            if shard.conn is None:
                raise BrokerUnavailable(f"cannot reach Redis node {shard.name}")
        return shard

    def _want(self, id: str) -> None:
        shard = self._shard_for(id)
        self._home[id] = shard
        shard.want(id)
        shard.schedule_flush()

    def _wait_confirmed(self, ids: Sequence[str]) -> None:
        waiting = [id for id in ids if id in self._home and self._home[id].pending(id)]
        if waiting and not self._waiters.wait(waiting):
            raise BrokerUnavailable(f"the Redis Cluster at {self.where} did not confirm a "
                                    f"subscription (lost, or not within {SUBSCRIBE_WAIT:g} s)")

    def confirmed(self, shard: _Shard, chan: bytes) -> None:
        id = self.id_of(chan)
        if id is None:
            return
        shard.unconfirmed.discard(id)
        self._waiters.confirmed(id)

    def id_of(self, chan: bytes) -> str | None:
        if not chan.startswith(self._channel_head):
            return None
        return chan[len(self._channel_head):-3].decode()

    def rehome(self, shard: _Shard, ids: list[str]) -> None:
        """``ids`` are no longer served by ``shard``'s node (their slot moved): learn the
        layout anew, subscribe them where they are now, then catch up from their
        streams what the move may have kept from this process."""
        ids = [id for id in ids if self._home.get(id) is shard]
        if not ids:
            return
        gevent.spawn(self._rehome, shard, ids)

    def _rehome(self, shard: _Shard, ids: list[str]) -> None:
        delay = BACKOFF_FIRST
        while not self._closed:
            try:
                self._client.nodes_manager.initialize()
                moved = []
                for id in ids:
                    if self._home.get(id) is not shard:
                        continue  # gone meanwhile
                    target = self._shard_for(id)
                    if target is shard:
                        continue  # still here after all (the refusal was another)
                    shard.count -= 1
                    shard.unconfirmed.discard(id)
                    self._home[id] = target
                    target.want(id)
                    target.schedule_flush()
                    moved.append(id)
                if moved:
                    self.stats["moved_ids"] += len(moved)
                    log.info("%d ids moved from Redis node %s; subscribed where they are now",
                             len(moved), shard.name)
                    self._catch_up(moved, shard.received)
                return
            except (RedisError, OSError, BrokerUnavailable) as exc:
                log.warning("following ids moved from %s failed: %s; trying again",
                            shard.name, exc)
                gevent.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(BACKOFF_CAP, delay * 2)

    # -- messages -----------------------------------------------------------------------

    def on_message(self, shard: _Shard, chan: bytes, payload: bytes) -> None:
        epoch, seq, data = payload.split(b" ", 2)
        seq = int(seq)
        self.read_from_pubsub(seq)
        if seq > shard.received:
            shard.received = seq
        id = self.id_of(chan)
        if self._home.get(id) is not None:  # not one whose SUNSUBSCRIBE is on its way
            message = Message(epoch.decode(), seq, data, stream=id)
            self._deliver(None if id == BROADCAST else id, message)

    def recover(self, shard: _Shard) -> None:
        """``shard``'s connection is back (or its node's slots went elsewhere): subscribe
        its ids again where they are, then catch up what this process missed."""
        self._client.nodes_manager.initialize()
        ids = list(shard.held())
        elsewhere = [id for id in ids if self._client.get_node_from_key(
            channel(self.prefix, id)).name != shard.name]
        if elsewhere:
            self._rehome(shard, elsewhere)
            ids = [id for id in ids if id not in set(elsewhere)]
        if not ids:  # nothing left on this node: the shard ends (this is its reader)
            shard.count = 0
            shard.closed = True
            self._shards.pop(shard.name, None)
            return
        received = shard.received
        restarted = shard.connect()
        ids = shard.resubscribe_all()
        shard.send("subscribe", ids)
        shard.reconnects += 1
        self.stats["resubscribed_ids"] += len(ids)
        shard.up = True
        log.warning("Redis node %s is back: %d ids resubscribed", shard.name, len(ids))
        if restarted:
            self.stats["node_restarts"] += 1
            log.warning("Redis node %s restarted and may have lost its history: the "
                        "connections of its ids end and resume", shard.name)
            self._lost(None if BROADCAST in ids else ids)
        else:
            gevent.spawn(self._catch_up, ids, received)

    def _catch_up(self, ids: list[str], received: int) -> None:
        """Deliver what ``ids``' streams got after ``received`` (less a margin); ids whose
        history no longer covers it are lost."""
        after = str(max(0, received - CATCH_UP_MARGIN))
        lost: list[str] = []
        delivered = 0
        for start in range(0, len(ids), REPLAY_BATCH):
            batch = ids[start:start + REPLAY_BATCH]
            try:
                answers = self._run(self._replay_script,
                                    [(id, ["", after, "1", self.history, self.ttl])
                                     for id in batch])
            except BrokerUnavailable as exc:
                log.warning("catching up after Redis node trouble failed: %s", exc)
                lost.extend(batch)
                continue
            found = []
            for id, answer in zip(batch, answers, strict=True):
                read = read_replay(answer, id)
                if read.missed:
                    lost.append(id)
                found.extend(read.messages)
            found.sort(key=lambda m: m.seq)
            for message in found:
                if self._home.get(message.stream) is not None:
                    self._deliver(None if message.stream == BROADCAST else message.stream,
                                  message)
                    delivered += 1
        self.stats["gap_messages"] += delivered
        if lost:
            self.stats["gap_lost_ids"] += len(lost)
            log.warning("history no longer covers what %d ids may have missed", len(lost))
            self._lost(None if BROADCAST in lost else lost)

    def _ping_forever(self) -> None:
        """PING every shard's connection so that a node that stopped answering is noticed."""
        while not self._closed:
            gevent.sleep(PING_INTERVAL)
            for shard in list(self._shards.values()):
                shard.ping()

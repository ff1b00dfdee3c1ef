"""The hub: the one owner of a server process's shared state.

Every connection opens and closes here, every publish goes through here, and
every counter in ``/stats`` is written here and nowhere else. The hub holds:

* the **router** (:mod:`comet.router`): which connections of this process
  are logged in as which ids, a pure data structure;
* the **broker** (:mod:`comet.broker`): message ids, history, and which
  process gets what; the hub subscribes an id when the router gets its first
  connection and unsubscribes it when the last one leaves, and the broker
  calls :meth:`Hub.deliver` for each message to deliver here;
* the **counters** (:class:`~comet.stats.Counters`), admission
  (:meth:`Hub.admit`, with :mod:`comet.limits`: connections per client and
  new connections per second), and the timer wheel of sleeping connections.

Three things hold whatever the transport and the life:

* a resuming login gets every message once, in order: while the broker
  confirms its subscriptions and fetches its replay (a round trip to Redis,
  during which other greenlets run and messages arrive), a stand-in
  (:class:`_Opening`) holds the connection's place in the router and keeps
  what is delivered; then the connection takes its place, in one turn, and
  begins with the replay up to the first message held, then what was held;
* every message is delivered as an :class:`Outgoing`, whose bytes per
  transport the hub builds once per fan-out and lets go with it;
* a connection the hub gives up on (``drop``) is logged out first and counted
  once, by the :class:`~comet.ends.End` it ended with.

What a fan-out counts: its deliveries, by transport (the router's
:class:`~comet.router.Fanout`, no work per connection), a broadcast's time,
and now and then (:mod:`comet.latency`'s sampler: one attribute read a
fan-out while no sample is due) how long after its publish the message's
last write went to the kernel.

Nothing here knows HTTP, sockets or a transport's framing beyond asking a
:class:`~comet.framing.Framing` for bytes.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence

import gevent

from comet import ends
from comet.broker import Broker, BrokerUnavailable, Message, Replay
from comet.broker import cursor as cursor_text
from comet.broker.cursor import Cursor
from comet.broker.graph import Page
from comet.broker.memory import MemoryBroker, MemoryHistory
from comet.burstlog import BurstLog
from comet.config import Settings
from comet.ends import End
from comet.expiry import Expiries
from comet.latency import Sampler, age
from comet.limits import RETRY_AFTER, Limits, Refused
from comet.release import MemoryReleaser
from comet.router import Router
from comet.stats import BROKER_DOWN, FULL, SHUTTING_DOWN, Counters
from comet.timerwheel import TimerWheel

log = logging.getLogger(__name__)

#: seconds between the slices of a spread shutdown
DRAIN_TICK = 0.05
#: connections a second a shutdown ends at least: it is spread over --drain-seconds only
#: where that is slower (a few thousand streams), and a small server stops at once
DRAIN_FLOOR = 1000
#: subscribers a notify publishes to in one broker call (one Redis script call each)
NOTIFY_BATCH = 1000

__all__ = ["RETRY_AFTER", "Hub", "Outgoing", "Refused", "broker_for"]


class Outgoing:
    """A message on its way to the connections: its fields, and its bytes per transport.

    Built by the hub once per delivery, so a broadcast frames each message
    once per transport, not once per connection; it goes when the fan-out
    and the queues holding it are done (the history keeps the Message).
    """

    __slots__ = ("id", "data", "seq", "epoch", "stream", "_frames")

    def __init__(self, message: Message) -> None:
        self.id = message.id
        self.data = message.data
        self.seq = message.seq
        self.epoch = message.epoch
        self.stream = message.stream
        self._frames: dict[str, bytes] | None = None

    def framed(self, framing) -> bytes:
        """The socket bytes of this message on ``framing``'s transport, made once."""
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        data = frames.get(framing.name)
        if data is None:
            data = frames[framing.name] = framing.wire(framing.message(self))
        return data


class _Opening:
    """A resuming connection's stand-in in the router while its replay is on its way.

    It keeps (up to the queue limit) what is delivered meanwhile, for
    :meth:`Hub.open` to put after the replay; a shutdown or a loss of history
    meanwhile is kept as the end the connection gets.
    """

    __slots__ = ("ids", "transport", "held", "limit", "overflowed", "ended")

    def __init__(self, limit: int, transport: str) -> None:
        self.ids: tuple[str, ...] = ()
        #: the connection's: what it is given meanwhile counts as delivered on it
        self.transport = transport
        self.held: list = []
        self.limit = limit
        self.overflowed = False
        self.ended: End | None = None

    def deliver(self, message) -> bool:
        if len(self.held) < self.limit:
            self.held.append(message)
        else:
            self.overflowed = True
        return True

    def end(self, end: End) -> None:
        self.ended = self.ended or end


def _fields(event: str, conn, end: End | None = None) -> dict:
    """A connection's fields of a log line (``--log-format json``)."""
    return {"event": event, "connection": repr(conn), "transport": conn.transport,
            "ids": len(conn.ids), "end": end.reason if end is not None else None}


def broker_for(settings: Settings) -> Broker:
    """The broker the settings ask for: Redis with ``--redis`` (a cluster with
    ``--redis-cluster``), else the in-process one."""
    if settings.redis and settings.redis_cluster:
        from comet.broker.rediscluster import RedisClusterBroker
        return RedisClusterBroker(settings.redis, history=settings.history,
                                  history_ttl=settings.history_ttl, wait=settings.redis_wait)
    if settings.redis:
        from comet.broker.redis import RedisBroker  # redis-py only where it is used
        return RedisBroker(settings.redis, history=settings.history,
                           history_ttl=settings.history_ttl, wait=settings.redis_wait)
    return MemoryBroker(MemoryHistory(settings.history, settings.history_ttl,
                                      settings.history_memory))


def _begin_vector(conn, replay: Replay, held: list, resume: bool) -> list:
    """A login's first messages where positions are per stream: the replay, then what
    was held while it came, each once, each with the connection's position as id.

    The connection's :class:`~comet.broker.cursor.Cursor` starts where the replay
    began. A new login (not a resume) starts at each stream's last message, read
    after its subscription took: a held message published in between is at or
    before that, and is new to the client all the same, so the cursor steps back
    to just before the first one of each stream.
    """
    cursor = Cursor(cursor_text.parse(replay.start) or {})
    if not resume:
        for message in held:
            cursor.before(message.stream, message.epoch, message.seq)
    conn.seen = cursor
    return [out for out in map(conn.fresh, (*replay.messages, *held)) if out is not None]


class Hub:
    """Router, broker, counters, admission and the timer wheel of one server process."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.router = Router()
        self.broker = broker if broker is not None else broker_for(settings)
        self.broker.start(self.deliver, self.lose, self.router.held)
        self.counters = Counters()
        #: ticks, heartbeats and poll timeouts of sleeping connections
        self.wheel = TimerWheel()
        #: when connections opened with a token must end (empty when subscribing is open)
        self.expiries = Expiries(self.expire)
        #: gives freed memory back once most connections have gone
        self.releaser = MemoryReleaser(lambda: self.counters.held, compact=self.router.compact)
        #: connections per client and new connections per second (--max-per-ip, ...)
        self.limits = Limits(settings.max_per_ip, settings.max_new_per_second)
        #: refusals for a limit, logged once per burst of each kind
        self.refusals_log = BurstLog(logging.getLogger("comet.limits"))
        self.accepting = True
        #: fingerprints of the publisher keys in use (the app sets it), for /stats
        self.publish_keys: Callable[[], list[str]] = list
        #: whether a fan-out is due to be timed (publish-to-socket latency)
        self.latency_due = Sampler()
        #: with the in-process broker, which delivers within the publish: when the
        #: publish under way began (epoch seconds), read only while a sample is due
        self._publish_began: float | None = None
        self._times_publishes = not self.broker.spans_processes

    # -- admission ------------------------------------------------------------------

    def room(self, client: str | None = None) -> str | None:
        """Why no connection (of ``client``, a key of :meth:`client`) can be taken now,
        or None; asks only, counts nothing."""
        full = self._full()
        if full is not None:
            return full[1]
        refused = self.limits.check(client)
        return refused.reason if refused is not None else None

    def _full(self) -> tuple[str, str] | None:
        """Why the server takes no connection from anyone now (its kind, and the words
        a client is told), or None."""
        if not self.accepting:
            return SHUTTING_DOWN, "server is shutting down"
        if not self.broker.up:
            return BROKER_DOWN, "message broker unavailable"
        if self.counters.held >= self.settings.max_connections:
            return FULL, f"at capacity ({self.settings.max_connections} connections)"
        return None

    def client(self, address: str | None) -> str | None:
        """Whom a connection from ``address`` counts against (None: not counted)."""
        return self.limits.key(address)

    def admit(self, client: str | None = None) -> None:
        """Take one more connection (of ``client``, a key of :meth:`client`), or raise
        :class:`Refused`: counted in ``refused`` when the server is full or stopping,
        by its limit's kind (:meth:`refuse`, by the caller) when over a limit."""
        full = self._full()
        if full is not None:
            self.counters.refusals[full[0]] += 1
            raise Refused(full[1])
        refused = self.limits.take(client)
        if refused is not None:
            raise refused

    def refuse(self, kind: str, message: str, *args, peer: str | None = None) -> None:
        """Count a refusal for the limit ``kind`` and log it, once per burst of its kind."""
        self.counters.limits[kind] += 1
        self.refusals_log.log(kind, message, *args, peer=peer)

    def refuse_subscriber(self, reason: str) -> None:
        """Count a subscriber refused for its token (401) or for an id it may not have (403)."""
        self.counters.subscribers_refused[reason] += 1

    def refuse_publisher(self, reason: str, who: str | None = None, messages: int = 0) -> None:
        """Count a publisher refused (401, 403, 429); over the rate, its messages by ``who``."""
        self.counters.publishers_refused[reason] += 1
        if who is not None:
            self.counters.publishes_limited[who] += messages

    # -- a connection's life ----------------------------------------------------------

    def open(self, conn, ids: Sequence[str], last: str | None = None,
             resume: bool = False, client: str | None = None) -> Replay | None:
        """Log ``conn`` in as ``ids``; with ``resume``, also what came after ``last``.

        ``client`` (a key of :meth:`client`, admitted for it) counts ``conn``
        against its client until :meth:`close`, which every connection opened
        reaches exactly once, however it ends.

        Returns once the broker delivers ``ids`` here, so nothing published
        after the client saw its opening is missed. When the broker cannot
        (Redis unreachable) the connection ends at once with
        :data:`~comet.ends.BROKER_DOWN`: its client retries, as for a 503.
        """
        counters = self.counters
        counters.open[conn.transport] += 1
        counters.accepted += 1
        if client is not None:
            conn.client = client
            self.limits.clients.add(client)
        self.releaser.observe(counters.held)
        vector = self.broker.vector
        # Per stream positions (a cluster): every login learns where it begins, by a
        # round trip during which messages arrive, so every login waits as a resume does.
        waits = resume or vector
        stand_in = _Opening(self.settings.queue_limit, conn.transport) if waits else conn
        new = [id for id in ids if self.router.login(id, stand_in)]
        try:
            self.broker.subscribe(ids, new)
            replay = self.broker.replay(ids, last if resume else None) if waits else None
        except BrokerUnavailable as exc:
            log.warning("%r cannot be served: %s", conn, exc)
            self._logout(stand_in)
            conn.end(ends.BROKER_DOWN)
            return None
        if not waits:
            return None
        # Swap the stand-in for the connection in one turn: nothing is delivered between.
        self.router.logout(stand_in)
        for id in ids:
            self.router.login(id, conn)
        held = stand_in.held
        if vector:
            messages = _begin_vector(conn, replay, held, resume)
        else:
            messages = replay.messages
            if held:
                first = held[0].seq
                messages = [m for m in messages if m.seq < first] + held
            if messages:
                conn.seen = messages[-1].seq
        if stand_in.ended is not None or stand_in.overflowed:
            self.drop(conn, stand_in.ended or ends.SLOW_CONSUMER)
        if resume:
            counters.resumes["missed" if replay.missed else "recovered"] += 1
        if not (resume or messages):
            return None
        return Replay(messages, replay.missed, replay.start)

    def expire_at(self, conn, when: float) -> None:
        """End ``conn`` with :data:`~comet.ends.TOKEN_EXPIRED` at ``when`` (epoch seconds),
        when its token runs out, unless it has ended or closed by then."""
        if conn.ended is None:
            self.expiries.at(conn, when)

    def expire(self, conn) -> None:
        """``conn``'s token has run out: log it out and end it, telling its client why."""
        if conn.ended is None:
            self._end(conn, ends.TOKEN_EXPIRED)

    def _end(self, conn, end: End) -> None:
        """End ``conn`` from the server's side: out of the router first (no message is
        delivered to it meanwhile), then its transport's ending for ``end``."""
        self._logout(conn)
        conn.end(end)

    def close(self, conn) -> None:
        """``conn`` has ended (``conn.ended``, or the client went): log out, count its end."""
        self.expiries.cancel(conn)
        # Its ids are named before the logout lets go of them (debug only: no cost else).
        fields = _fields("closed", conn) if log.isEnabledFor(logging.DEBUG) else None
        self._logout(conn)
        end = conn.ended or ends.CLIENT_GONE
        counters = self.counters
        counters.open[conn.transport] -= 1
        counters.ends[end.reason] += 1
        client = conn.client
        if client is not None:
            conn.client = None
            self.limits.clients.remove(client)
        self.releaser.observe(counters.held)
        if fields is not None:
            fields["end"] = end.reason
            log.debug("closed %s: %s", fields["connection"], end.reason, extra=fields)

    def drop(self, conn, end: End, lost: int = 0) -> None:
        """Give up on ``conn`` (too slow): log it out now, end it, count what is lost."""
        if conn.ids:
            log.warning("dropping %s %s on %s", end.reason, ",".join(conn.ids), conn.transport,
                        extra=_fields("dropped", conn, end))
            self.counters.drops[end.reason] += 1
        self._logout(conn)
        self.counters.messages_dropped += lost + conn.drop(end)

    def _logout(self, conn) -> None:
        gone = self.router.logout(conn)
        if gone:
            self.broker.unsubscribe(gone)

    # -- messages ---------------------------------------------------------------------

    def publish(self, id: str, data: bytes) -> tuple[Message, int | None]:
        """To every connection of ``id``, wherever it is: the message and local deliveries.

        Raises :class:`~comet.broker.BrokerUnavailable` when it went nowhere.
        """
        self._began()
        try:
            result = self.broker.publish(id, data)
        finally:
            self._publish_began = None
        self.counters.published["send"] += 1
        return result

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[Message, int | None]]:
        """:meth:`publish` for each ``(id, data)`` of a batch, in one round trip where it can."""
        self._began()
        try:
            results = self.broker.publish_many(items)
        finally:
            self._publish_began = None
        self.counters.published["batch"] += len(results)
        return results

    def broadcast(self, data: bytes) -> tuple[Message, int | None]:
        """To every connection, as :meth:`publish`."""
        self._began()
        try:
            result = self.broker.broadcast(data)
        finally:
            self._publish_began = None
        self.counters.published["broadcast"] += 1
        return result

    def _began(self) -> None:
        """A publish begins: where the broker delivers within it and a fan-out is due to
        be timed, its time is the message's publish time (a batch's: its first's)."""
        if self._times_publishes and self.latency_due.due:
            self._publish_began = time.time()

    def deliver(self, id: str | None, message: Message) -> int:
        """The broker's call: ``message`` to this process's connections of ``id`` (None: all)."""
        out = Outgoing(message)
        counters = self.counters
        if id is None:
            # Timed once per broadcast (two clock reads), never per connection: what
            # handing one message to everyone here costs (/metrics' fan-out histogram).
            began = time.perf_counter()
            fanout = self.router.broadcast(out)
            counters.fanout.observe(time.perf_counter() - began)
        else:
            fanout = self.router.send(id, out)
        delivered = fanout.delivered
        counters.messages_out += delivered
        # Per fan-out, not per connection: a few additions, one per transport reached.
        deliveries = counters.deliveries
        for transport, count in fanout.by_transport.items():
            deliveries[transport] += count
        if delivered and self.latency_due.due:
            self._time_publish_to_socket(message)
        for conn in fanout.refused:
            self.drop(conn, ends.SLOW_CONSUMER, lost=1)
        return delivered

    def _time_publish_to_socket(self, message: Message) -> None:
        """A sample is due and this fan-out wrote: from the message's publish (its id's
        time over Redis, the publish's start in process) to now, the loop's end."""
        published = self.broker.published_at(message)
        if published is None:
            published = self._publish_began
            if published is None:
                return  # published before the sample came due: the next one is timed
        self.counters.publish_to_socket.observe(age(published, time.time()))
        self.latency_due.taken()

    def lose(self, ids: Sequence[str] | None) -> None:
        """The broker's call: history cannot cover what ``ids``' connections here missed
        (None: any connection's). They end, so that their clients resume and are told."""
        if ids is None:
            conns = self.router.all_connections()
        else:
            conns = list({conn for id in ids for conn in self.router.connections_of(id)})
        for conn in conns:
            self._end(conn, ends.HISTORY_LOST)
        if conns:
            log.warning("ended %d connections whose missed messages history no longer has",
                        len(conns))

    def position(self) -> str | None:
        """The id a client that has seen everything so far would hold (long-poll's
        ``last``); None where positions are per stream (each connection has its own)."""
        return None if self.broker.vector else self.broker.position()

    # -- subscriptions between users ----------------------------------------------------

    def follow(self, subscriber: str, ids: Sequence[str]) -> int:
        """``subscriber`` follows ``ids``, within --max-following and --max-followers
        (else :class:`~comet.broker.graph.GraphFull`, nothing changed); returns how many
        are new."""
        settings = self.settings
        added = self.broker.graph.follow(subscriber, ids, settings.max_following,
                                         settings.max_followers)
        self.counters.subscriptions["follows"] += added
        return added

    def unfollow(self, subscriber: str, ids: Sequence[str]) -> int:
        """``subscriber`` follows ``ids`` no more; returns how many it did follow."""
        removed = self.broker.graph.unfollow(subscriber, ids)
        self.counters.subscriptions["unfollows"] += removed
        return removed

    def following(self, subscriber: str, after: str | None) -> Page:
        """One page of whom ``subscriber`` follows, after the cursor ``after``."""
        return self.broker.graph.following(subscriber, after, self.settings.subscriptions_page)

    def notify_many(self, items: Sequence[tuple[str, bytes]]) -> tuple[int, int | None]:
        """Each ``(id, data)`` to every connection of every subscriber of its ``id``: how
        many subscribers over all items, and this process's deliveries (None where the
        broker spans processes).

        Each subscriber gets the message as its own, through the batch publish
        path (one script call per :data:`NOTIFY_BATCH` on one Redis): it is in
        that subscriber's history, so a resume replays it, and reaches each of
        its connections once, wherever they are. A write per subscriber, the
        price of a notify that resumes exactly like a send (docs/design.rst).

        The followers of every distinct id are read first, in one round trip
        (:meth:`~comet.broker.graph.Graph.followers_many`); the deliveries then
        go in item order, :data:`NOTIFY_BATCH` at a time across items, so a
        subscriber gets the items' messages in their order. What is held is
        those follower lists (at most ``--max-followers`` per distinct id) and
        one batch, never a list of every delivery. Raises
        :class:`~comet.broker.BrokerUnavailable` when it cannot; a batch taken
        before then stays taken.
        """
        distinct = list(dict.fromkeys(id for id, _ in items))
        followers = dict(zip(distinct, self.broker.graph.followers_many(distinct), strict=True))
        self.counters.subscriptions["notifies"] += len(items)
        deliveries = ((follower, data) for id, data in items for follower in followers[id])
        delivered = 0
        batch = list(itertools.islice(deliveries, NOTIFY_BATCH))
        while batch:
            delivered += self._notify_batch(batch)
            batch = list(itertools.islice(deliveries, NOTIFY_BATCH))
        subscribers = sum(len(followers[id]) for id, _ in items)
        return subscribers, None if self.broker.spans_processes else delivered

    def _notify_batch(self, batch: list[tuple[str, bytes]]) -> int:
        """One broker call of a notify's deliveries; this process's count of them."""
        self._began()
        try:
            results = self.broker.publish_many(batch)
        finally:
            self._publish_began = None
        self.counters.published["notify"] += len(results)
        return sum(count or 0 for _, count in results)

    # -- the server's life ------------------------------------------------------------

    def shutdown(self, end: End = ends.SHUTDOWN, over: float = 0.0) -> int:
        """Refuse new connections and end every open one cleanly, spread over at most
        ``over`` seconds; returns how many. Blocks (sleeps) while it spreads.

        Spread, because every client ended comes back at once otherwise: to the
        sibling workers in a rolling restart, or to the new server, which would
        take the whole crowd in one burst (and a thundering herd of resumes on
        Redis). The ends go in slices every :data:`DRAIN_TICK`, never slower
        than :data:`DRAIN_FLOOR` a second, so a server holding a few streams
        stops at once; an SSE client is also told a jittered ``retry:``.
        """
        self.accepting = False
        conns = self.router.all_connections()
        total = len(conns)
        random.shuffle(conns)  # not one id's or one client's connections all in the first slice
        steps = max(1, int(min(over, total / DRAIN_FLOOR) / DRAIN_TICK))
        per_step = max(1, -(-total // steps))
        if steps > 1:
            log.info("ending %d connections over %.1f s, %d every %.2f s",
                     total, steps * DRAIN_TICK, per_step, DRAIN_TICK)
        for start in range(0, total, per_step):
            if start:
                gevent.sleep(DRAIN_TICK)
            self._end_all(conns[start:start + per_step], end)
        late = self.router.all_connections()  # logged in while the slices went (a resume's
        self._end_all(late, end)              # round trip began before accepting stopped)
        self.broker.close()  # its reader and pinger end too: nothing keeps the process up
        return total + len(late)

    def _end_all(self, conns: Sequence, end: End) -> None:
        for conn in conns:
            if (conn.ended is not None or not conn.ids
                    or conn not in self.router.connections_of(conn.ids[0])):
                continue  # ended or gone while the slices before it went
            try:
                self._end(conn, end)
            except Exception:  # one connection's failure must not keep the others open
                log.exception("ending %r failed", conn)

    def snapshot(self) -> dict:
        """``/stats``: the counters, ids held, sleeping timers and the broker."""
        snapshot = self.counters.snapshot(self.router.ids, len(self.wheel))
        snapshot["token_timers"] = len(self.expiries)
        snapshot["publish_keys"] = self.publish_keys()
        snapshot["limits"] = {"refused": dict(sorted(self.counters.limits.items())),
                              **self.limits.snapshot()}
        snapshot["broker"] = self.broker.snapshot()
        return snapshot

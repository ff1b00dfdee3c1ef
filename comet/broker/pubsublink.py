"""One pub/sub connection to one Redis node, and the ids it should hold there.

Shared by the Redis broker (:mod:`comet.broker.redis`: one link) and the Redis
Cluster broker (:mod:`comet.broker.rediscluster`: one link per primary node).
A :class:`PubSubLink` keeps:

* **what it should hold**: the ids this process has connections for there,
  which only the hub's router lists (``held()``: a second set of a million
  ids would cost ~50 bytes each), so the link counts them and keeps three
  small, short-lived sets: what is still to send (``to_subscribe``,
  ``to_unsubscribe``) and what the node has not confirmed yet
  (``unconfirmed``). The ids logins and logouts bring within one turn of the
  event loop go out together (:meth:`PubSubLink.flush`);
* **one connection, one reader**: a greenlet reads it; when it breaks, the
  link is down and reconnects with backoff (0.1 s doubling to 5 s, +-50 %
  jitter) through the broker's ``recover``, which subscribes ``held()`` again
  and catches up; a PING every few seconds (:meth:`PubSubLink.ping`) notices
  a node that stopped answering (the socket times out after two).

What differs between the brokers is a subclass's: how a command carries
channels (:meth:`PubSubLink.send`), what a reply means (:meth:`PubSubLink.on_reply`)
and how to come back (:meth:`PubSubLink.recover`). Logins wait for their ids'
confirmations in :class:`Waiters`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

import gevent
import gevent.event
import gevent.lock
import redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: seconds between PINGs on a pub/sub connection; twice this without a reply is a loss
PING_INTERVAL = 5.0
#: reconnect backoff: first wait and cap, in seconds (each wait gets +-50% jitter)
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
#: seconds a login waits at most for its confirmation while the link stays up. A
#: link that breaks fails its waiting logins at once (:meth:`Waiters.fail_all`);
#: this bound is for a process so busy that the confirmation sits unread: measured
#: with 56 workers on two cores, a 5 s bound failed logins Redis had confirmed
SUBSCRIBE_WAIT = 30.0


class _Waiter(gevent.event.Event):
    """A login waiting for Redis to confirm the subscriptions of some ids."""

    __slots__ = ("pending", "failed")

    def __init__(self, ids) -> None:
        super().__init__()
        self.pending = set(ids)
        self.failed = False


class Waiters:
    """Logins waiting for their ids' subscriptions to be confirmed, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[_Waiter]] = {}

    def wait(self, ids, timeout: float = SUBSCRIBE_WAIT) -> bool:
        """Until every one of ``ids`` is :meth:`confirmed`; False after ``timeout`` s, or
        at once when the link they wait on is lost (:meth:`fail_all`)."""
        waiter = _Waiter(ids)
        for id in ids:
            self._by_id.setdefault(id, []).append(waiter)
        if waiter.wait(timeout) and not waiter.failed:
            return True
        for id in waiter.pending:
            held = self._by_id.get(id)
            if held and waiter in held:
                held.remove(waiter)
                if not held:
                    del self._by_id[id]
        return False

    def confirmed(self, id: str) -> None:
        for waiter in self._by_id.pop(id, ()):
            waiter.pending.discard(id)
            if not waiter.pending:
                waiter.set()

    def fail_all(self) -> None:
        """A link was lost: every login still waiting gives up now (a 503 for its client)."""
        by_id, self._by_id = self._by_id, {}
        for waiters in by_id.values():
            for waiter in waiters:
                waiter.failed = True
                waiter.set()


class PubSubLink:
    """A pub/sub connection, its reader, and the ids it should hold (module docstring)."""

    def __init__(self, name: str, options: dict, held: Callable[[], Iterable[str]],
                 waiters: Waiters | None = None) -> None:
        #: where it goes, for log lines (never a password)
        self.name = name
        #: redis-py connection keywords, with ``connection_class``
        self.options = options
        #: the ids this link should hold (what a reconnect subscribes again)
        self.held = held
        #: how many: each :meth:`want` counts one up, each :meth:`unwant` one down
        self.count = 0
        #: logins waiting for confirmations: failed at once when this link is lost
        self.waiters = waiters
        self.to_subscribe: set[str] = set()
        self.to_unsubscribe: set[str] = set()
        self.unconfirmed: set[str] = set()
        self.conn = None
        #: True while the connection is subscribed and read
        self.up = False
        self.reconnects = 0
        self.closed = False
        self._flushing = False
        self._write_lock = gevent.lock.Semaphore()
        self._reader: gevent.Greenlet | None = None

    # -- what a subclass says -------------------------------------------------------

    def send(self, command: str, ids) -> None:
        """Write ``command`` (SUBSCRIBE or UNSUBSCRIBE, or their sharded forms) for ``ids``."""
        raise NotImplementedError

    def on_reply(self, reply) -> None:
        """One reply read from the connection."""
        raise NotImplementedError

    def recover(self) -> None:
        """Connect again, subscribe ``held()`` and catch up; sets ``up``. Raises
        RedisError or OSError while the node cannot be reached."""
        raise NotImplementedError

    def lost_reply(self, exc: Exception) -> bool:
        """An error reply read instead of a reply: True if handled (the connection
        goes on), False if the connection is broken."""
        return False

    # -- subscriptions ----------------------------------------------------------------

    def want(self, id: str) -> None:
        """Hold ``id`` here from the next flush on: a new one (the router says which)."""
        self.count += 1
        if id in self.to_unsubscribe:
            self.to_unsubscribe.discard(id)  # never sent: the node still has it
        else:
            self.to_subscribe.add(id)

    def unwant(self, id: str) -> None:
        """``id`` has no connection here any more."""
        self.count -= 1
        if id in self.to_subscribe:
            self.to_subscribe.discard(id)  # never sent
        else:
            self.to_unsubscribe.add(id)

    def pending(self, id: str) -> bool:
        """True while ``id``'s subscription is not confirmed (or not even sent)."""
        return id in self.to_subscribe or id in self.unconfirmed

    def confirmed_count(self) -> int:
        return self.count - len(self.to_subscribe) - len(self.unconfirmed)

    def schedule_flush(self) -> None:
        if not self._flushing and (self.to_subscribe or self.to_unsubscribe):
            self._flushing = True
            gevent.spawn(self.flush)

    def flush(self) -> None:
        """Send what logins and logouts asked for since the last flush."""
        try:
            while self.to_subscribe or self.to_unsubscribe:
                subscribe, self.to_subscribe = self.to_subscribe, set()
                unsubscribe, self.to_unsubscribe = self.to_unsubscribe, set()
                if self.conn is None:
                    continue  # down: the reconnect subscribes whatever is wanted then
                self.unconfirmed |= subscribe
                try:
                    self.send("subscribe", subscribe)
                    self.send("unsubscribe", unsubscribe)
                except (RedisError, OSError) as exc:
                    log.warning("subscribing at %s failed: %s", self.name, exc)
                    return  # the reader sees the loss too and resubscribes all
        finally:
            self._flushing = False

    def resubscribe_all(self) -> list[str]:
        """After a reconnect: every held id as unconfirmed, to send again; returns them."""
        ids = sorted(self.held())
        self.count = len(ids)
        self.unconfirmed = set(ids)
        self.to_subscribe.clear()
        self.to_unsubscribe.clear()
        return ids

    def write(self, *commands: tuple) -> None:
        """Write ``commands`` (each a tuple of arguments) in one send, one writer at a time."""
        with self._write_lock:
            if self.conn is None:
                raise redis.ConnectionError("pub/sub connection lost")
            self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)

    # -- the connection ---------------------------------------------------------------

    def open(self, **overrides):
        """A new connection to the node (not yet this link's)."""
        options = {**self.options, **overrides}
        conn = options.pop("connection_class")(**options)
        conn.connect()
        return conn

    def start_reading(self) -> None:
        self.up = True
        self._reader = gevent.spawn(self._read_forever)

    def drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()

    def close(self) -> None:
        """Stop reading; never blocks (it may run in the event loop's callback)."""
        self.closed = True
        self.up = False
        if self._reader is not None:
            self._reader.kill(block=False)  # the reader lets go of the connection as it ends
        else:
            self.drop_connection()

    def ping(self) -> None:
        if self.up and self.conn is not None:
            try:
                with self._write_lock:
                    self.conn.send_command("PING", check_health=False)
            except (RedisError, OSError):
                pass  # the reader sees it

    def _read_forever(self) -> None:
        try:
            self._read_and_reconnect()
        finally:
            self.drop_connection()

    def _read_and_reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while not self.closed:
            try:
                self._read_until_broken()
            except (RedisError, OSError, ValueError) as exc:  # ValueError: closed under it
                if self.closed:
                    return
                if self.up:
                    log.warning("lost Redis at %s: %s; held connections stay, publishing "
                                "there answers 503 until it is back", self.name, exc)
                self.up = False
                self.drop_connection()
                if self.waiters is not None:
                    self.waiters.fail_all()
            while not self.closed and not self.up:
                gevent.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(BACKOFF_CAP, delay * 2)
                try:
                    self.recover()
                    delay = BACKOFF_FIRST
                except (RedisError, OSError) as exc:
                    log.debug("Redis at %s still unreachable: %s", self.name, exc)
                    self.drop_connection()

    def _read_until_broken(self) -> None:
        read = self.conn.read_response
        while True:
            try:
                reply = read()
            except redis.ResponseError as exc:
                if self.lost_reply(exc):
                    continue
                raise
            self.on_reply(reply)

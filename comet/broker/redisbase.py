"""What the two Redis brokers share before they differ: their settings and connection options.

:class:`~comet.broker.redis.RedisBroker` (one Redis) and
:class:`~comet.broker.rediscluster.RedisClusterBroker` are built from the same
URL and bounds; the options for their command connections and for their
pub/sub connections (RESP2, so that messages are plain replies read in order
with the subscription confirmations; RESP3 would make them pushes; a read
timeout of two PING intervals) are made here once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import gevent
from redis.exceptions import RedisError

from comet.broker import BrokerUnavailable, Message, redacted
from comet.broker.pubsublink import PING_INTERVAL
from comet.broker.redisconn import connection_options
from comet.broker.redisscripts import published_at
from comet.latency import Sampler, age

log = logging.getLogger(__name__)

#: Redis commands in flight at once from one process, unless the URL's max_connections says
POOL_SIZE = 32

#: conf/redis.conf's stream node size; above it every id with history costs more
STREAM_NODE_ADVISED = 1024


def advise_stream_nodes(config_get: Callable[[str], dict], where: str) -> int | None:
    """Log once if Redis preallocates big stream nodes; the size, or None if unknown.

    Every id that was sent a message keeps a stream for ``--history-ttl``, and
    Redis 7 preallocates a stream's first node to ``stream-node-max-bytes``
    (4096 by default, at most 4096): 4.4 KB per id even for one short message,
    1.3 KB at 1024. A managed Redis may refuse CONFIG: then nothing is said.
    """
    try:
        size = int(config_get("stream-node-max-bytes").get("stream-node-max-bytes"))
    except (RedisError, OSError, TypeError, ValueError):
        return None
    if size > STREAM_NODE_ADVISED:
        log.warning("Redis at %s has stream-node-max-bytes %d: each id with history costs "
                    "about 4.4 KB of Redis memory; %d (conf/redis.conf) makes it 1.3 KB",
                    where, size, STREAM_NODE_ADVISED)
    return size


class ReplayAnswer(NamedTuple):
    """What a replay script answered (``{epoch, last, missed, after, seq1, data1, ...}``)."""

    epoch: str
    missed: bool
    #: the offset the replay starts after
    after: int
    messages: list[Message]


def read_replay(answer: list, stream: str | None = None) -> ReplayAnswer:
    """The answer of ``REPLAY`` or ``SHARD_REPLAY`` (``stream``: the id it read, for a
    cluster's per stream positions)."""
    epoch = answer[0].decode()
    messages = [Message(epoch, int(answer[i]), answer[i + 1], stream=stream)
                for i in range(4, len(answer), 2)]
    return ReplayAnswer(epoch, answer[2] == 1, int(answer[3]), messages)


class RedisBrokerBase:
    """The settings and connection options of a broker over Redis."""

    spans_processes = True

    def __init__(self, url: str, *, history: int = 100, history_ttl: float = 300.0,
                 prefix: str = "comet", timeout: float = 5.0, wait: float = 0.0) -> None:
        self.url = url
        #: the URL fit for a log line (no password)
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
        #: Redis commands in flight at once
        self.pool_size = int(options.pop("max_connections", POOL_SIZE))
        #: redis-py keywords for command connections (with our gevent connection class)
        self.options = options
        #: the same for pub/sub connections
        self.pubsub_options = {**options, "socket_timeout": 2 * PING_INTERVAL, "protocol": 2}
        #: seconds a message read from pub/sub had been on its way (Redis's clock to
        #: this host's), the latest sampled; None until one is read
        self.pubsub_lag: float | None = None
        self._lag_due = Sampler()

    def published_at(self, message: Message) -> float:
        """When ``message`` was published (epoch seconds): its offset is Redis's clock."""
        return published_at(message.seq)

    def read_from_pubsub(self, seq: int) -> None:
        """A message of offset ``seq`` was just read from pub/sub: its age is the lag,
        measured when a sample is due (one attribute read when it is not)."""
        if self._lag_due.due:
            self.pubsub_lag = age(published_at(seq), time.time())
            self._lag_due.taken()

    def reach(self, attempt: Callable[[], None], what: str) -> None:
        """``attempt()`` until it works, for ``--redis-wait`` seconds at most (none: once);
        then :class:`BrokerUnavailable`, which says why and how to wait."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                attempt()
                return
            except (RedisError, OSError, BrokerUnavailable) as exc:
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(f"cannot reach {what} at {self.where}: {exc} "
                                            "(--redis-wait SECONDS keeps trying at start)"
                                            ) from None
                log.warning("waiting for %s at %s: %s", what, self.where, exc)
                gevent.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

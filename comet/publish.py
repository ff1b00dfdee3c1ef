"""Publishing from an application's own process, straight into Redis (no HTTP).

Like Socket.IO's emitter: a backend that already talks to the Redis that
comet's servers use (``--redis URL``) publishes with its own redis-py client,
and the message gets its id, its place in history and its delivery exactly as
one sent to ``POST /send/<id>``, because it runs the same script::

    import redis
    import comet.publish

    client = redis.Redis.from_url("redis://localhost:6379/0")
    message_id = comet.publish.publish(client, "alice", "hello")
    comet.publish.broadcast(client, "to everyone")

    # many in one round trip
    ids = comet.publish.publish_many(client, [("alice", "hi"), ("bob", "hey")])

With a Redis Cluster (servers run with ``--redis-cluster``), pass a
``redis.RedisCluster`` client: each message then runs its id's script on its
id's node (one call per message), and the ids returned are per stream, as the
servers' are there.

The history bounds (``--history``, ``--history-ttl``) are the ones the
servers recorded in Redis when they started. Only this module's functions and
their arguments are the API; the keys behind them may change.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from comet.broker.redisscripts import (
    BROADCAST,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    PUBLISH,
    SHARD_PUBLISH,
    bounds_key,
    channel,
    epoch_candidate,
    publish_arguments,
    stream_key,
)
from comet.inputs import ID_PATTERN

#: the key prefix comet's servers use
PREFIX = "comet"


def publish(client, id: str, message: str | bytes, prefix: str = PREFIX) -> str:
    """Send ``message`` to every connection of ``id``; returns its id (``<epoch>-<offset>``)."""
    return publish_many(client, [(id, message)], prefix)[0]


def broadcast(client, message: str | bytes, prefix: str = PREFIX) -> str:
    """Send ``message`` to every connection; returns its id."""
    return _run(client, [(BROADCAST, _bytes(message))], prefix)[0]


def publish_many(client, items: Iterable[tuple[str, str | bytes]],
                 prefix: str = PREFIX) -> list[str]:
    """Send each ``(id, message)``, in order, in one round trip; returns their ids.

    Every id is checked first (1 to 128 of ``A-Z a-z 0-9 _ . : -``), so a bad
    one raises ValueError before anything is sent.
    """
    checked = []
    for id, message in items:
        if not isinstance(id, str) or not ID_PATTERN.fullmatch(id):
            raise ValueError(f"bad id {id!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")
        checked.append((id, _bytes(message)))
    return _run(client, checked, prefix)


def _run(client, items: list[tuple[str, bytes]], prefix: str) -> list[str]:
    if isinstance(client, redis.RedisCluster):
        return _run_on_cluster(client, items, prefix)
    keys, args = publish_arguments(prefix, items)
    answer = client.register_script(PUBLISH)(keys=keys, args=args)
    epoch = _text(answer[0])
    return [f"{epoch}-{int(seq)}" for seq in answer[1:]]


def _bytes(message: str | bytes) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else bytes(message)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _run_on_cluster(client, items: list[tuple[str, bytes]], prefix: str) -> list[str]:
    """Each message by its own script call on its id's node, with the servers' bounds."""
    history, ttl = client.hmget(bounds_key(prefix), "history", "ttl")
    history = int(history) if history is not None else DEFAULT_HISTORY
    ttl = int(ttl) if ttl is not None else DEFAULT_TTL
    script = client.register_script(SHARD_PUBLISH)
    ids = []
    for id, data in items:
        epoch, seq = script(keys=[stream_key(prefix, id)],
                            args=[epoch_candidate(), channel(prefix, id), data, history, ttl])
        ids.append(f"{_text(epoch)}-{int(seq)}")
    return ids

"""The graph of subscriptions in Redis: every worker and machine sees the same one.

Keys (``prefix`` is the broker's, ``comet`` unless configured):

``<prefix>:{graph}:out:<subscriber>``
    a sorted set, every score 0, of the ids the subscriber follows: sorted by
    id, so a page is one ZRANGEBYLEX after the cursor, exact and stable.
``<prefix>:{graph}:in:<id>``
    a set of the subscribers that follow the id: what a notify reads, at once.

One script writes both sides of every relation of a request, after checking
both limits, so a follow is taken whole or refused whole, and a reader never
sees one side without the other. A script may only touch keys of one cluster
slot, and a follow touches the subscriber's key and one key per id it
follows, which hash to many slots; so every graph key carries the one hash
tag ``{graph}``, and the graph lives on one node of a Redis Cluster (the
node of that slot) while the messages' streams and channels stay spread by
id. On one Redis the tag changes nothing. Redis drops a set with its last
member: an id with no relation costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from comet.broker import BrokerUnavailable
from comet.broker.graph import FOLLOWERS, FOLLOWING, GraphFull, Page

#: KEYS: the subscriber's followees, then each id's followers; ARGV: the subscriber,
#: the two limits, then the ids (distinct, in the order of KEYS). Returns
#: {added, ""}, or {-1, subscriber} over max_following, {-2, id} over max_followers,
#: having changed nothing.
FOLLOW = """
local out, subscriber = KEYS[1], ARGV[1]
local max_following, max_followers = tonumber(ARGV[2]), tonumber(ARGV[3])
local new = {}
for i = 2, #KEYS do
  if not redis.call('ZSCORE', out, ARGV[i + 2]) then
    new[#new + 1] = i
  end
end
if redis.call('ZCARD', out) + #new > max_following then
  return {-1, subscriber}
end
for _, i in ipairs(new) do
  if redis.call('SCARD', KEYS[i]) >= max_followers then
    return {-2, ARGV[i + 2]}
  end
end
for _, i in ipairs(new) do
  redis.call('ZADD', out, 0, ARGV[i + 2])
  redis.call('SADD', KEYS[i], subscriber)
end
return {#new, ''}
"""

#: KEYS: as FOLLOW's; ARGV: the subscriber, then the ids. Returns how many it followed.
UNFOLLOW = """
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('SREM', KEYS[i], ARGV[1])
end
return removed
"""


def following_key(prefix: str, subscriber: str) -> str:
    return f"{prefix}:{{graph}}:out:{subscriber}"


def followers_key(prefix: str, id: str) -> str:
    return f"{prefix}:{{graph}}:in:{id}"


class RedisGraph:
    """The :class:`~comet.broker.graph.Graph` in Redis sets, through a broker's client.

    ``client`` gives the broker's redis-py client (a ``Redis`` or a
    ``RedisCluster``, on gevent sockets), None while it has none; ``slots``
    is the broker's semaphore of commands in flight, so the graph waits its
    turn with publishing rather than opening connections of its own.
    """

    def __init__(self, client: Callable[[], object], slots, prefix: str, where: str) -> None:
        self._client = client
        self._slots = slots
        self.prefix = prefix
        self.where = where
        self._scripts: dict[str, object] = {}

    def follow(self, subscriber: str, ids: Sequence[str], max_following: int,
               max_followers: int) -> int:
        ids = list(dict.fromkeys(ids))
        keys = [following_key(self.prefix, subscriber),
                *(followers_key(self.prefix, id) for id in ids)]
        added, who = self._call(FOLLOW, keys, [subscriber, max_following, max_followers, *ids])
        if added == -1:
            raise GraphFull(FOLLOWING, subscriber, max_following)
        if added == -2:
            raise GraphFull(FOLLOWERS, _text(who), max_followers)
        return int(added)

    def unfollow(self, subscriber: str, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))
        keys = [following_key(self.prefix, subscriber),
                *(followers_key(self.prefix, id) for id in ids)]
        return int(self._call(UNFOLLOW, keys, [subscriber, *ids]))

    def following(self, subscriber: str, after: str | None, limit: int) -> Page:
        low = f"({after}" if after is not None else "-"
        found = self._run(lambda c: c.zrangebylex(following_key(self.prefix, subscriber),
                                                  low, "+", start=0, num=limit + 1))
        ids = [_text(id) for id in found]
        if len(ids) > limit:
            return Page(ids[:limit], ids[limit - 1])
        return Page(ids, None)

    def followers(self, id: str) -> list[str]:
        return [_text(s) for s in self._run(
            lambda c: c.smembers(followers_key(self.prefix, id)))]

    def followers_many(self, ids: Sequence[str]) -> list[list[str]]:
        """One pipeline of SMEMBERS: every key is in the ``{graph}`` slot, so on a
        cluster too it is one node and one round trip."""
        if not ids:
            return []

        def read(client) -> list:
            pipe = client.pipeline(transaction=False)
            for id in ids:
                pipe.smembers(followers_key(self.prefix, id))
            return pipe.execute()
        return [[_text(s) for s in found] for found in self._run(read)]

    def _call(self, lua: str, keys: list[str], args: list):
        def run(client):
            script = self._scripts.get(lua)
            if script is None:
                script = self._scripts[lua] = client.register_script(lua)
            return script(keys=keys, args=args, client=client)
        return self._run(run)

    def _run(self, command: Callable):
        client = self._client()
        if client is None:
            raise BrokerUnavailable(f"Redis at {self.where} is unreachable")
        try:
            with self._slots:
                return command(client)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis at {self.where}: {exc}") from None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

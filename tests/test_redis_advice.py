"""What the Redis broker says at start about the Redis it was given (real redis-servers)."""

from __future__ import annotations

import logging

import pytest

from comet.broker.redis import RedisBroker
from tests.redisservers import RedisServer, redis_binary_or_skip


@pytest.mark.parametrize(("args", "warned"), [((), True),
                                              (("--stream-node-max-bytes", "1024"), False)])
def test_big_stream_nodes_are_named_at_start_with_the_setting_that_shrinks_them(
        caplog, args, warned):
    redis_binary_or_skip("redis-server")
    with RedisServer(*args) as server:
        broker = RedisBroker(server.url)
        with caplog.at_level(logging.WARNING, logger="comet.broker.redisbase"):
            broker.start(lambda id, message: 0)
        broker.close()
    said = [r.getMessage() for r in caplog.records if "stream-node-max-bytes" in r.getMessage()]
    if warned:
        assert said == [f"Redis at {server.url} has stream-node-max-bytes 4096: each id with "
                        "history costs about 4.4 KB of Redis memory; 1024 (conf/redis.conf) "
                        "makes it 1.3 KB"]
    else:
        assert said == []

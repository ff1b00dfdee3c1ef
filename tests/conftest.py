from collections.abc import Iterator

import pytest

from tests.realserver import RealServer
from tests.redisservers import RedisServer, redis_binary_or_skip


@pytest.fixture(params=["on", "off"], ids=["hibernate", "plain"])
def server(request):
    """A real server with fast ticks, in both connection lives, stopped after the test."""
    srv = RealServer("--interval", "0.2", "--hibernate", request.param).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["on", "off"], ids=["hibernate", "plain"])
def start_server(request):
    """Start servers with the given flags, in both connection lives; all stopped after."""
    started = []

    def start(*args: str, env: dict | None = None) -> RealServer:
        if "--hibernate" not in args:
            args = (*args, "--hibernate", request.param)
        srv = RealServer(*args, env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server of this test's own (one starts in ~20 ms), stopped
    after it even when it fails."""
    redis_binary_or_skip("redis-server")
    with RedisServer() as srv:
        yield srv


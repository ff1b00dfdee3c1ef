import os
import shutil
from collections.abc import Iterator

import pytest

from tests.browser import Chromium, Page
from tests.realserver import RealServer
from tests.redisservers import RedisCluster, RedisServer, redis_binary_or_skip


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


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    """One three-node Redis Cluster for the whole run: creating one takes ~2 s."""
    redis_binary_or_skip("redis-server", "redis-cli")
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """The session's cluster, reset for this test: empty (FLUSHALL on every node), every
    node running, every slot where the cluster was created. Reset before the test, not
    after, so whatever the last test left (a failure midway included) is undone."""
    redis_cluster_session.reset()
    return redis_cluster_session


@pytest.fixture
def page() -> Iterator[Page]:
    """A tab of a fresh headless Chromium; the browser and its children die after the test."""
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not on PATH but CI=true: .ci/run must install it")
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    browser = Chromium(executable).start()
    try:
        yield browser.page()
    finally:
        browser.stop()

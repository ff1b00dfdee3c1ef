import pytest

from tests.realserver import RealServer


@pytest.fixture
def server():
    """A real server with fast ticks, stopped after the test."""
    srv = RealServer("--interval", "0.2").start()
    yield srv
    srv.stop()


@pytest.fixture
def start_server():
    """Start servers with the given flags; all are stopped after the test."""
    started = []

    def start(*args: str, env: dict | None = None) -> RealServer:
        srv = RealServer(*args, env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()

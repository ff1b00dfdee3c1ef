"""flood --transport sse|ws|poll against the real comet server: every connection held,
every broadcast received once, pings answered, polls looping on ``last``."""

from __future__ import annotations

import pytest
import requests

from flood.latency import stamp
from flood.stats import sum_snapshots
from flood.worker import Flood, Plan
from tests.realserver import RealServer

N = 30


@pytest.fixture(scope="module")
def real():
    """One server for the module: fast heartbeats (WebSocket pings) and short polls."""
    srv = RealServer("--heartbeat", "0.2", "--poll-timeout", "0.3", "--interval", "0.2").start()
    yield srv
    srv.stop()


def flood_and_broadcast(server: RealServer, transport: str, path: str,
                        broadcasts: int = 2) -> dict:
    """Hold N connections, broadcast stamped messages one by one, stop once all arrived."""
    urls = [f"{server.url}{path}{transport}-{i}" for i in range(N)]
    flood = Flood(Plan(transport=transport, duration=30, concurrency=10), urls, lambda line: None)
    state = {"sent": 0}
    kind = {"stream": "test", "sse": "events"}.get(transport, transport)

    def step():
        c = flood.counters
        if c.closed:
            flood.stop()
        elif state["sent"] < broadcasts and c.latency.count >= N * state["sent"] \
                and server.stats()["connections"].get(kind) == N:
            state["sent"] += 1
            requests.post(server.url + "/broadcast", data=stamp(f"b{state['sent']}"), timeout=10)
        elif c.latency.count >= N * broadcasts:
            flood.stop()

    return sum_snapshots([flood.run(on_tick=step, tick=0.1)])


@pytest.mark.parametrize("transport, path", [("sse", "/events/"), ("ws", "/ws/"),
                                             ("poll", "/poll/"), ("stream", "/test/")])
def test_each_transport_holds_and_receives_every_broadcast_once(real, transport, path):
    final = flood_and_broadcast(real, transport, path)
    assert final["closed"] == 0, final["reasons"]
    assert final["active"] == N
    assert final["latency"]["count"] == 2 * N  # each broadcast once on each connection
    if transport == "sse":  # retry and heartbeats are not messages
        assert final["chunks"] == 2 * N


def test_ws_pings_are_answered_so_connections_stay_past_several_heartbeats(real):
    urls = [f"{real.url}/ws/ping-{i}" for i in range(5)]
    flood = Flood(Plan(transport="ws", duration=1.2), urls, lambda line: None)
    final = flood.run()
    assert final["active"] == 5 and final["closed"] == 0, final["reasons"]


def test_poll_loops_on_last_across_empty_timeouts(real):
    """Polls time out empty (0.3 s) and ask again; a message sent later still arrives."""
    urls = [f"{real.url}/poll/loop-{i}" for i in range(3)]
    flood = Flood(Plan(transport="poll", duration=20), urls, lambda line: None)
    state = {"posted": False}

    def step():
        if not state["posted"] and flood.counters.active == 3 \
                and real.stats()["accepted"] >= 3 * 3:  # each asked at least 3 times
            state["posted"] = True
            for i in range(3):
                requests.post(f"{real.url}/send/loop-{i}", data=stamp("late"), timeout=10)
        if flood.counters.latency.count >= 3:
            flood.stop()

    final = sum_snapshots([flood.run(on_tick=step, tick=0.1)])
    assert final["closed"] == 0 and final["latency"]["count"] == 3


def test_a_ws_connection_closed_by_the_server_ends_with_its_code():
    srv = RealServer().start()
    try:
        flood = Flood(Plan(transport="ws", duration=20), [f"{srv.url}/ws/bye"], lambda line: None)
        state = {"stopped": False}

        def step():
            if flood.counters.active == 1 and not state["stopped"]:
                state["stopped"] = True
                srv.terminate()
            if flood.counters.closed:
                flood.stop()

        final = flood.run(on_tick=step, tick=0.1)
    finally:
        srv.stop()
    assert final["reasons"] == {"websocket close 1012": 1}

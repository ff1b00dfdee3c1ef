"""The part 3 load: the friends graph drawn right, loaded into a real server, and a
notify along it received exactly as often as the server says it fanned out."""

from __future__ import annotations

from collections import Counter

import gevent
import networkx as nx
import numpy as np
import pytest
import requests

from flood.bagraph import barabasi_albert
from flood.ids import Popularity
from flood.msggen import Generator, fan_out_summary
from flood.social import load_through_api
from flood.stats import sum_snapshots
from flood.worker import Flood, Plan
from tests.floodservers import run_module
from tests.realserver import RealServer


def rows_of(graph) -> np.ndarray:
    return graph.followed.reshape(-1, graph.m)


@pytest.mark.parametrize("sequential", [20_000, 60])  # the textbook loop; pointer jumping
def test_every_user_follows_m_distinct_earlier_users(sequential):
    graph = barabasi_albert(3000, 7, seed=5, sequential=sequential)
    rows = rows_of(graph)
    assert graph.links == (3000 - 7) * 7 == len(graph.follower)
    assert rows.shape == (3000 - 7, 7)
    assert (rows < graph.follower.reshape(-1, 7)).all()  # earlier users only: no self, no loop
    ordered = np.sort(rows, axis=1)
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()  # no one follows an id twice
    assert (graph.follower.reshape(-1, 7) == np.arange(7, 3000)[:, None]).all()


def test_the_same_seed_draws_the_same_graph_and_another_seed_another():
    one, again, other = (barabasi_albert(2000, 5, seed=s) for s in (1, 1, 2))
    assert (one.followed == again.followed).all()
    assert not (one.followed == other.followed).all()


@pytest.mark.parametrize("sequential", [20_000, 60])
def test_the_degrees_are_those_of_preferential_attachment(sequential):
    """The same process as networkx's barabasi_albert_graph: the largest degree and the
    share of small ones agree over several seeds (a uniform pick would give a largest
    degree of about 3m, a wrong bias several times networkx's)."""
    users, m, seeds = 5000, 10, range(4)
    ours, theirs, ours_low, theirs_low = [], [], [], []
    for seed in seeds:
        graph = barabasi_albert(users, m, seed=seed, sequential=sequential)
        degree = (np.bincount(graph.followed, minlength=users)
                  + np.bincount(graph.follower, minlength=users))
        ours.append(degree.max())
        ours_low.append((degree < 2 * m).mean())
        reference = [d for _, d in nx.barabasi_albert_graph(users, m, seed=seed).degree()]
        theirs.append(max(reference))
        theirs_low.append(np.mean([d < 2 * m for d in reference]))
    assert 0.7 < np.mean(ours) / np.mean(theirs) < 1.4, (ours, theirs)
    assert abs(np.mean(ours_low) - np.mean(theirs_low)) < 0.05, (ours_low, theirs_low)


def test_the_lines_say_the_graph_as_comet_graphload_reads_it():
    graph = barabasi_albert(300, 4, seed=3)
    lines = list(graph.lines(start=1))
    assert len(lines) == 300 - 4
    first = lines[0].split()
    assert first == ["5", "1", "2", "3", "4"]  # user m (id 5) follows the first m
    parsed = np.array([[int(x) for x in line.split()[1:]] for line in lines])
    assert (parsed == rows_of(graph) + 1).all()
    assert [len(line.split()) for line in graph.lines(start=1, per_line=3)][:2] == [4, 2]


def test_the_fan_out_summary_reads_percentiles_from_counts():
    counts = Counter({0: 40, 3: 50, 100: 9, 900: 1})
    assert fan_out_summary(counts, 50 * 3 + 9 * 100 + 900, 100) == {
        "mean": 19.5, "p50": 3, "p99": 100, "max": 900}
    assert fan_out_summary(Counter(), 30, 10) == {"mean": 3.0}
    assert fan_out_summary(Counter({3: 2}), 30, 10) == {"mean": 3.0}  # 8 came in bulk


@pytest.mark.parametrize("batch", [1, 5])  # POST /notify/<id>, or bulk POST /notify
def test_a_graph_loaded_through_the_api_carries_each_notify_to_every_follower_once(batch):
    """Every user connected over SSE; notifies for random users; the streams receive
    exactly the fan-out the server answered, which is each id's followers in the graph."""
    users, m = 120, 4
    graph = barabasi_albert(users, m, seed=9)
    server = RealServer().start()
    try:
        loaded = load_through_api(graph, "127.0.0.1", server.port, concurrency=4,
                                  out=lambda line: None)
        assert loaded["links_added"] == graph.links and loaded["statuses"] == {"200": users - m}
        some = str(users)
        listed = requests.get(f"{server.url}/subscriptions/{some}", timeout=10).json()
        assert listed["following"] == sorted(str(i + 1) for i in rows_of(graph)[-1])

        ids = [str(i) for i in range(1, users + 1)]
        urls = [f"{server.url}/events/{id}" for id in ids]
        flood = Flood(Plan(transport="sse", duration=60, concurrency=10), urls, lambda s: None)
        gen = Generator(server.url, ids, rate=60, seed=7, action="notify", batch=batch)
        state: dict = {}

        def step():
            c = flood.counters
            if c.closed:
                flood.stop()
            elif "sender" not in state and c.active == users:
                state["sender"] = gevent.spawn(gen.run, 1.0, 10.0, lambda line: None)
            elif "sender" in state and state["sender"].dead \
                    and c.latency.count >= gen.tally.subscribers:
                flood.stop()

        final = sum_snapshots([flood.run(on_tick=step, tick=0.1)])
        result = state["sender"].get()
    finally:
        server.stop()
    assert final["closed"] == 0 and result["errors"] == 0 and result["sent"] > 10
    followers = np.bincount(graph.followed, minlength=users)
    picks = Popularity(ids, 0.0, 7)
    expected = Counter(int(followers[int(picks.pick()) - 1]) for _ in range(result["sent"]))
    if batch == 1:
        assert gen.tally.fan_out == expected  # the server fanned out along the graph drawn
    assert gen.tally.subscribers == sum(n * count for n, count in expected.items())
    assert final["latency"]["count"] == final["chunks"] == gen.tally.subscribers > 0


def test_bad_graph_options_are_usage_errors():
    for args, says in ((("--graph", "100", "--ids", "1-5"), "leave out --ids"),
                       (("--graph", "10", "--links", "15"), "needs more than 15 users"),
                       (("--graph", "100", "--ports", "8001-8002"), "one server")):
        result = run_module("flood.msggen", *args)
        assert result.returncode == 2 and says in result.stderr, result.stderr


def test_the_graph_can_be_written_for_comet_graphload(tmp_path):
    out = tmp_path / "graph.txt"
    result = run_module("flood.msggen", "--graph", "500", "--links", "6", "--graph-seed", "4",
                        "--graph-out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "".join(barabasi_albert(500, 6, seed=4).lines())

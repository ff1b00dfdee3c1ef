"""The nevers of docs/design.rst, checked from the code's own imports (no module is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMET = ROOT / "comet"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, as dotted names (``from a import b`` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def ours(path: Path) -> set[str]:
    return {name for name in imports_of(path) if name.split(".")[0] == "comet"}


def module(name: str) -> Path:
    return COMET / (name.replace(".", "/") + ".py")


#: what touches HTTP, sockets, greenlets or the event loop
IO = ("socket", "gevent", "http", "geventwebsocket", "wsgiref", "select")


@pytest.mark.parametrize("name", ["router", "broker/__init__", "broker/memory", "broker/cursor"])
def test_router_and_broker_know_no_http_no_socket_no_greenlet(name):
    found = imports_of(module(name))
    assert not {n for n in found if n.split(".")[0] in IO}, found


def test_the_router_imports_nothing_of_comet():
    assert ours(module("router")) == set()


@pytest.mark.parametrize("name", ["broker/__init__", "broker/memory", "broker/cursor"])
def test_the_broker_knows_no_transport_and_no_connection(name):
    assert {n for n in ours(module(name)) if not n.startswith("comet.broker")} == set()


@pytest.mark.parametrize("name", ["wire", "wsreader"])
def test_the_wire_imports_nothing_of_comet_and_does_no_io(name):
    found = imports_of(module(name))
    assert ours(module(name)) == set()
    assert not {n for n in found if n.split(".")[0] in IO}, found


@pytest.mark.parametrize("name", ["framing", "ends"])
def test_framing_and_ends_stay_on_the_wire(name):
    assert {n.split(".")[1] for n in ours(module(name)) if "." in n} <= {"wire", "ends"}


@pytest.mark.parametrize("name", ["life", "plain", "sleeping", "response"])
def test_the_lives_reach_routing_only_through_the_hub(name):
    found = ours(module(name))
    assert not {n for n in found if n.startswith(("comet.router", "comet.broker.memory",
                                                     "comet.stats"))}, found
    broker_names = {n for n in found if n.startswith("comet.broker.")}
    assert broker_names <= {"comet.broker.Replay", "comet.broker.Message"}, broker_names


@pytest.mark.parametrize("name", ["server", "app", "hub", "life", "plain", "sleeping",
                                  "response", "wsgi", "gunicorn", "handshake", "master",
                                  "worker"])
def test_serving_code_imports_no_operations_tool(name):
    found = ours(module(name))
    assert not {n for n in found if n.startswith(("comet.tune", "comet.capacity"))}, found


def test_counters_are_written_by_the_hub_alone():
    """Only hub.py assigns to a counter (``counters.x += ...``, ``.open[...] -= ...``)."""
    writers = set()
    for path in COMET.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AugAssign):
                text = ast.unparse(node.target)
                if "counters" in text:
                    writers.add(path.name)
    assert writers == {"hub.py"}

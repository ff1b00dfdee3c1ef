"""flood.bench at N=200 against the real comet server: the JSON has every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psutil
import pytest

import comet.server  # noqa: F401  (a broken server is a collection error here, never a skip)
from comet.hostlimits import LINUX_EPHEMERAL_PORTS, ephemeral_ports, ports_per_source
from flood import memory
from tests.floodservers import ROOT
from tests.realserver import free_port
from tests.redisservers import redis_binary_or_skip
from tests.workerservers import alive

N = 200

FIGURES = {
    "command", "date", "target", "tcp", "connections_requested", "rate_requested",
    "held", "closed", "closed_reasons", "accept_rate_per_s", "ramp_s",
    "server_pids", "server_pids_seen", "server_processes", "server_rss_before",
    "server_rss_after", "server_kb_per_conn", "server_pss_before", "server_pss_after",
    "server_pss_kb_per_conn", "server_pss_anon_before", "server_pss_anon_after",
    "server_pss_anon_kb_per_conn", "server_by_process_before", "server_by_process_after",
    "workers",
    "slab_before", "slab_after", "slab_kb_per_conn",
    "tcp_mem_pages_before", "tcp_mem_pages_after", "tcp_mem_kb_per_conn",
    "tcp_inuse_before", "tcp_inuse_after", "tcp_counters_during",
    "client_processes", "client_rss_before", "client_rss_after", "client_kb_per_conn",
    "server_stats_after", "fanout", "series", "plot",
}
REDIS = {"redis_url", "redis_pid", "redis_started", "redis_rss_from", "redis_rss_before",
         "redis_rss_after", "redis_kb_per_conn", "redis_used_memory_before",
         "redis_used_memory_after", "redis_ids", "redis_bytes_per_id",
         "server_redis_kb_per_conn", "redis_errors"}
FANOUT = {"answer", "answer_s", "expected", "received", "count", "p50_ms", "p99_ms", "max_ms",
          "all_received_ms", "deliveries_per_s", "buckets"}
SERIES = {"t", "active", "closed", "chunks", "attempted", "pending", "ramp_per_s",
          "client_rss_bytes", "server_rss_bytes", "server_pss_bytes", "redis_rss_bytes",
          "slab_bytes", "tcp_mem_bytes", "mem_available_bytes", "server_cpu_percent"}


def bench(tmp_path, *extra: str) -> dict:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", str(N), "--rate", "2000",
         "--hold", "0.5", "--interval", "1", "--json", str(out), "--plot", str(png), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server RSS" in result.stdout and "broadcast fan-out" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "bench.md").read_text()
    assert f"summary: {tmp_path / 'bench.md'}" in result.stdout
    assert "## What it measured" in page and "python -m flood.bench --connections" in page
    assert "| server RSS |" in page and "![the run](bench.png)" in page
    return json.loads(out.read_text())


def check(doc: dict) -> None:
    assert FIGURES <= set(doc), FIGURES - set(doc)
    assert FANOUT <= set(doc["fanout"]), FANOUT - set(doc["fanout"])
    assert doc["series"] and SERIES <= set(doc["series"][-1])
    check_series(doc["series"])
    assert doc["held"] == N and doc["closed"] == 0
    assert doc["fanout"]["answer"]["delivered"] == N
    assert doc["fanout"]["received"] == N and doc["fanout"]["all_received_ms"] is not None
    assert doc["server_stats_after"]["connections"]["total"] == N
    assert doc["server_rss_after"] > 0 and doc["server_pss_after"] > 0
    assert doc["client_rss_after"] > 0 and doc["client_processes"] == 1
    assert doc["accept_rate_per_s"] > 0
    assert {"ListenOverflows", "TCPSynRetrans"} <= set(doc["tcp_counters_during"])
    whole = doc["whole"]  # memory in use (not page cache) from before the run to its highest
    assert whole["used_before_bytes"] == memory.used(doc["meminfo_before"])
    assert whole["used_highest_bytes"] == max(r["mem_used_bytes"] for r in doc["series"])
    assert whole["used_bytes"] == whole["used_highest_bytes"] - whole["used_before_bytes"]
    assert whole["available_lowest_bytes"] == min(r["mem_available_bytes"] for r in doc["series"])
    assert whole["predicted_bytes"] == doc["precheck"]["predicted_bytes"] > 0
    # the pre-check passed it, and its prediction is in the document
    plan = doc["precheck"]
    assert 0 < plan["predicted_bytes"] < plan["with_margin_bytes"] < plan["available_bytes"]
    ends = 2 if "server_command" in doc else 1  # with --target only the flood's are checked
    assert plan["terms"]["kernel slab"] == N * ends * 5 * 1024


def check_series(series: list[dict], redis: bool = False) -> None:
    """Every row has the memory by component and the ramp rate, each plausible."""
    for row in series:
        assert SERIES <= set(row), SERIES - set(row)
        assert row["server_pss_bytes"] > 0 and row["slab_bytes"] > 0
        assert 0 < row["mem_available_bytes"] < psutil.virtual_memory().total
        assert row["server_pss_bytes"] <= row["server_rss_bytes"]
        assert row["tcp_mem_bytes"] >= 0 and row["ramp_per_s"] >= 0
        assert (row["redis_rss_bytes"] > 0) if redis else row["redis_rss_bytes"] is None
    assert max(row["ramp_per_s"] for row in series) > 0          # the ramp is seen
    assert series[-1]["client_rss_bytes"] > 0


def test_bench_starts_the_server_and_reports_every_figure(tmp_path):
    check(bench(tmp_path))


def test_bench_measures_a_running_server_given_by_target_and_pid(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "comet.server", "--host", "127.0.0.1", "--port", str(port),
         "--interval", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        doc = bench(tmp_path, "--target", f"http://127.0.0.1:{port}",
                    "--server-pid", str(server.pid))
        assert server.poll() is None  # bench leaves a server it did not start running
    finally:
        server.terminate()
        server.wait(timeout=15)
    check(doc)
    assert doc["server_pids"] == [server.pid]


def test_bench_sse_repeated_broadcasts_churn_and_server_args(tmp_path):
    doc = bench(tmp_path, "--transport", "sse", "--broadcasts", "3", "--churn",
                "--server-args", "--heartbeat 0.5")
    check(doc)
    assert doc["transport"] == "sse" and doc["server_command"][-2:] == ["--heartbeat", "0.5"]
    assert doc["server_stats_after"]["connections"]["events"] == N
    fan = doc["fanout"]
    assert len(fan["broadcasts"]) == 3 and len(fan["all_received_ms_each"]) == 3
    assert all(b["received"] == N for b in fan["broadcasts"])  # each counted on its own
    assert sorted(fan["all_received_ms_each"])[1] == fan["all_received_ms"]  # the median
    churn = doc["churn"]
    assert churn["empty"] and churn["stats"]["timers"] == 0
    assert churn["rss_after"] > 0 and churn["rss_percent"] > 0


def test_bench_modes_run_both_and_print_them_side_by_side(tmp_path):
    out = tmp_path / "modes.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", "50", "--hold", "0.3",
         "--interval", "1", "--modes", "on,off", "--no-plot", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--hibernate on | --hibernate off" in result.stdout
    doc = json.loads(out.read_text())
    page = (tmp_path / "modes.md").read_text()
    assert "| figure | --hibernate on | --hibernate off |" in page and "| held | 50 | 50 |" in page
    for mode in ("on", "off"):
        run = doc["modes"][mode]
        assert run["held"] == 50 and run["server_command"][-2:] == ["--hibernate", mode]


def test_bench_unread_clients_leave_data_in_the_socket_buffers(tmp_path):
    out = tmp_path / "unread.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", "50", "--hold", "0.3",
         "--transport", "ws", "--unread", "--unread-bytes", "16384", "--no-plot",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["held"] == 50 and doc["fanout"] is None
    assert doc["unread"]["bytes_per_connection"] >= 16384
    assert doc["unread"]["delivered"] == [50, 50]


def test_a_broken_comet_server_fails_this_module_instead_of_skipping_it(tmp_path):
    """If ``comet.server`` cannot be imported, every bench figure is unmeasured: an error."""
    (tmp_path / "break_comet_server.py").write_text(
        "import sys\nsys.modules['comet.server'] = None  # import comet.server now fails\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "break_comet_server", "--collect-only", "-q",
         "-p", "no:cacheprovider", "tests/test_flood_bench.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "skipped" not in result.stdout.lower(), result.stdout
    assert result.returncode == pytest.ExitCode.INTERRUPTED, result.stdout
    assert "comet.server" in result.stdout


def test_bench_records_the_arguments_main_was_given_not_sys_argv(tmp_path):
    from flood import bench
    out = tmp_path / "given.json"
    argv = ["--connections", "20", "--hold", "0.3", "--interval", "1", "--no-plot",
            "--json", str(out)]
    assert bench.main(argv) == 0
    assert json.loads(out.read_text())["command"] == ["flood.bench", *argv]


def small_bench(tmp_path, *extra: str, timeout: float = 100) -> tuple[dict, str]:
    """A 60-connection run without a PNG: its JSON document and what it printed."""
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--connections", "60", "--hold", "1",
         "--interval", "1", "--no-plot", "--json", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text()), result.stdout


def test_bench_workers_with_its_own_redis_measures_every_process_and_leaves_none(tmp_path):
    redis_binary_or_skip("redis-server")
    doc, printed = small_bench(tmp_path, "--workers", "2", "--redis-server")
    shown = printed + json.dumps(doc["server_stats_after"], indent=1)  # when one fails
    assert doc["held"] == 60 and doc["closed"] == 0, shown
    # the server is its master and the master's two workers, each measured with its PSS
    stats_after = doc["server_stats_after"]
    master, *workers = doc["server_pids"]
    assert master == stats_after["master"]["pid"] == doc["server_pids_seen"][0], shown
    assert sorted(workers) == sorted(w["pid"] for w in stats_after["workers"]), shown
    assert doc["server_processes"] == 3 and set(doc["server_pids_seen"]) >= set(doc["server_pids"])
    parts = doc["server_by_process_after"]
    assert [p["pid"] for p in parts] == doc["server_pids"]
    assert all(p["pss_bytes"] > 0 and p["rss_bytes"] >= p["pss_bytes"] for p in parts)
    assert doc["server_pss_after"] == sum(p["pss_bytes"] for p in parts)
    assert doc["server_rss_after"] > doc["server_pss_after"]  # shared pages, counted once each
    assert doc["server_pss_anon_after"] > 0
    assert doc["server_command"][-4:-2] == ["--workers", "2"]
    # its Redis: started, given to the server, measured before and with the 60 held
    assert REDIS <= set(doc), REDIS - set(doc)
    assert doc["redis_started"] and doc["redis_rss_from"] == "psutil"
    check_series(doc["series"], redis=True)
    assert doc["server_command"][-2:] == ["--redis", doc["redis_url"]]
    assert stats_after["broker"]["kind"] == "redis"
    assert doc["redis_rss_before"] > 0 and doc["redis_rss_after"] > 0
    assert doc["redis_used_memory_before"] > 0 and doc["redis_used_memory_after"] > 0
    assert doc["redis_ids"] == stats_after["ids"] == 60 and doc["redis_errors"] == [], shown
    assert doc["redis_bytes_per_id"] is not None and doc["server_redis_kb_per_conn"] is not None
    assert "Redis used_memory" in printed and "server + Redis userland" in printed
    # a broadcast to one worker reaches the clients of both, through Redis (the answer's
    # "delivered" is None: the worker asked cannot know the others' deliveries)
    assert doc["fanout"]["received"] == 60, shown
    assert doc["fanout"]["all_received_ms"] is not None, shown
    # nothing of the run is left: not the master, no worker, not the redis-server
    gone = [*doc["server_pids_seen"], doc["redis_pid"]]
    assert not [pid for pid in gone if alive(pid)], gone


def test_bench_with_a_running_redis_measures_it_by_info_and_leaves_it_running(
        tmp_path, redis_server):
    doc, printed = small_bench(tmp_path, "--redis", redis_server.url)
    assert redis_server.alive  # bench never stops a Redis it did not start
    assert doc["held"] == 60 and doc["server_command"][-2:] == ["--redis", redis_server.url]
    assert not doc["redis_started"] and doc["redis_pid"] is None
    assert doc["redis_rss_from"] == "INFO used_memory_rss" and doc["redis_rss_after"] > 0
    assert doc["redis_ids"] == 60 and doc["redis_used_memory_after"] > 0
    assert redis_server.url in printed


def test_bench_workers_without_redis_is_refused_before_anything_starts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--workers", "2", "--connections", "10",
         "--no-plot", "--json", str(tmp_path / "never.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--workers 2 needs --redis-server or --redis URL" in result.stderr
    assert not (tmp_path / "never.json").exists()


def refused_bench(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    """Run a bench that its pre-check must refuse; prove that it started nothing.

    Every process bench starts inherits its environment, so a process carrying this
    run's mark is one it started (and left behind, if still there); and bench makes its
    output directory before it starts anything, so a missing one means nothing started.
    """
    mark = f"comet-precheck-{uuid.uuid4()}"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flood.bench", *argv, "--json", str(out / "never.json"),
         "--plot", str(out / "never.png")], cwd=ROOT, text=True,
        env={**os.environ, "COMET_TEST_MARK": mark},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # not refused: let it stop what it started (SIGTERM)
            proc.terminate()
            proc.communicate(timeout=60)
    assert proc.returncode == 2, stdout + stderr
    assert stderr.startswith("bench: refused before starting anything"), stderr
    assert not out.exists()
    assert not [p.pid for p in psutil.process_iter() if marked(p, mark)]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def marked(proc: psutil.Process, mark: str) -> bool:
    try:
        return proc.environ().get("COMET_TEST_MARK") == mark
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def test_fifty_million_are_refused_for_memory_with_the_fix_and_nothing_starts(tmp_path):
    redis_binary_or_skip("redis-server")
    result = refused_bench(tmp_path, "--connections", "50000000", "--workers", "3",
                           "--redis-server")
    lines = result.stderr.splitlines()
    memory = next(line for line in lines if line.startswith("  memory: "))
    assert "50,000,000 connections need" in memory and "available (MemAvailable)" in memory
    assert "lower --connections to ~" in memory and memory.endswith("or free memory")
    assert "what the run would take in memory:" in lines
    assert any(line.startswith("  total while clients read") and "does NOT fit" in line
               for line in lines)


def test_too_few_source_addresses_are_refused_naming_source(tmp_path):
    redis_binary_or_skip("redis-server")
    per_address = ports_per_source(ephemeral_ports() or LINUX_EPHEMERAL_PORTS)
    n = per_address + 1000  # one address more than --source gives
    result = refused_bench(tmp_path, "--connections", str(n), "--workers", "2",
                           "--redis-server", "--source", "127.0.0.2")
    ports = [line for line in result.stderr.splitlines() if line.startswith("  ports: ")]
    assert ports == [f"  ports: {n:,} connections need 2 source addresses ({per_address:,} "
                     f"ephemeral ports each: net.ipv4.ip_local_port_range "
                     f"{' '.join(map(str, ephemeral_ports() or LINUX_EPHEMERAL_PORTS))}), "
                     "--source gives 1: --source 127.0.0.2-127.0.0.3, or 127.0.0.2-127.0.0.4 "
                     "to keep each address under half the range, where connect() stays fast"]
    assert "  memory: " not in result.stderr


def test_bench_stopped_by_sigterm_stops_its_server_workers_and_redis(tmp_path):
    redis_binary_or_skip("redis-server")
    bench_proc = subprocess.Popen(
        [sys.executable, "-m", "flood.bench", "--workers", "2", "--redis-server",
         "--connections", "20", "--hold", "60", "--interval", "1", "--no-plot"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    try:
        for line in bench_proc.stderr:  # "hold: ..." once the flood holds its streams
            if line.startswith("hold:"):
                break
        tree = psutil.Process(bench_proc.pid).children(recursive=True)
        started = {p.pid for p in tree}
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "redis-server" in names and "comet.server" in names
        bench_proc.terminate()
        out, err = bench_proc.communicate(timeout=60)
    finally:
        if bench_proc.poll() is None:
            bench_proc.kill()
            bench_proc.wait()
    assert bench_proc.returncode == 130, err
    assert len(started) >= 5  # master, two workers, redis-server, a flood process
    assert not [pid for pid in started if alive(pid)], started


def test_bench_publishes_to_each_user_and_counts_what_arrived(tmp_path):
    """--publish-rate: msggen to random held ids across two workers; all of it read."""
    redis_binary_or_skip("redis-server")
    doc, printed = small_bench(tmp_path, "--workers", "2", "--redis-server",
                               "--publish-rate", "200", "--publish-for", "2",
                               "--publish-batch", "5")
    per_user = doc["per_user"]
    assert per_user["errors"] == 0 and per_user["accepted"] == per_user["sent"] > 0, per_user
    assert per_user["received"] == per_user["accepted"] and per_user["not_received"] == 0
    assert per_user["count"] == per_user["received"] and per_user["p99_ms"] is not None
    assert per_user["closed_streams"] == 0 and per_user["batch"] == 5
    assert "per-user messages" in printed and f"{per_user['received']:,} received" in printed


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_bench_notifies_along_a_friends_graph_and_counts_every_delivery(tmp_path, broker):
    """--social: the held users follow each other (through the API, or straight into the
    workers' Redis), notifies for random users; every follower's stream gets each once."""
    extra = ["--transport", "sse"]
    if broker == "redis":
        redis_binary_or_skip("redis-server")
        extra += ["--workers", "2", "--redis-server"]
    doc, printed = small_bench(tmp_path, *extra, "--social", "4", "--publish-rate", "40",
                               "--publish-for", "2", "--publish-batch", "1")
    social = doc["social"]
    assert social["graph"]["users"] == 60 and social["graph"]["links"] == (60 - 4) * 4
    assert social["load"]["via"] == ("redis" if broker == "redis" else "api"), social["load"]
    assert social["errors"] == 0 and social["accepted"] == social["notifies"] > 0, social
    assert social["deliveries_expected"] == round(social["fan_out"]["mean"] * social["accepted"])
    assert social["received"] == social["deliveries_expected"] > 0 and social["not_received"] == 0
    assert social["count"] == social["received"] and social["closed_streams"] == 0
    if broker == "redis":
        assert social["redis_graph_bytes"] > 0
    assert "friends graph" in printed and f"{social['received']:,} of" in printed


def test_bench_publish_options_are_checked_before_anything_starts(tmp_path):
    for extra, says in ((["--social", "15"], "needs a positive M and --publish-rate"),
                        (["--publish-rate", "0"], "must be positive"),
                        (["--concurrency", "0"], "--concurrency must be positive"),
                        (["--publish-rate", "10", "--unread"], "nobody reads")):
        result = subprocess.run([sys.executable, "-m", "flood.bench", "--connections", "10",
                                 "--no-plot", *extra], cwd=ROOT, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2 and says in result.stderr, result.stderr


def test_connections_in_flight_are_bounded_over_all_flood_processes():
    from flood.bench import CONNECTS_IN_FLIGHT, connects_at_once
    assert connects_at_once(1) == 256                     # a small run: as the flood's own
    assert connects_at_once(51) == CONNECTS_IN_FLIGHT // 51 == 80   # the million
    assert connects_at_once(1000) == 16



def test_the_ramp_line_says_how_long_is_left_at_the_pace_so_far():
    from flood.bench import ramp_eta
    from flood.benchtable import progress
    total = {"active": 300_000, "closed": 0, "attempted": 320_000}
    eta = ramp_eta(total, 1_000_000, 100.0)                  # 3,200 tried a second so far
    assert eta == pytest.approx(212.5)
    assert ramp_eta({"attempted": 0}, 1_000_000, 1.0) is None
    row = {"server_rss_bytes": 2_000_000_000, "server_cpu_percent": 93.0}
    line = progress("ramp", total, 1_000_000, 3_150.0, row, eta)
    assert line.startswith("ramp: 300000/1000000 active, 0 closed, 3150 conn/s, ETA 3m32s,")
    assert "ETA" not in progress("hold", total, 1_000_000, 0.0, row)

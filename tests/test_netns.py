"""The TCP established hash: sizing it (comet.hostlimits), the row comet.tune prints,
and ``flood.bench --netns`` running a real bench in a namespace of its own.

The bench run needs root (CAP_SYS_ADMIN, for ``unshare --net`` and the sysctl) and
Linux 6.1+; where the host cannot make a namespace it skips and says why. It puts
back the host's ``net.ipv4.tcp_child_ehash_entries``, checked here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comet import hostlimits
from flood import netns
from tests.procsys import write_tree
from tests.test_tune import make_tree, run_tune

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("sockets", "buckets"), [
    (1, 1), (2, 2), (3, 4), (1024, 1024), (1025, 2048), (2_000_000, 2_097_152),
    (10**9, hostlimits.EHASH_MAX)])
def test_a_bucket_per_socket_rounded_up_to_a_power_of_two_and_capped(sockets, buckets):
    assert hostlimits.ehash_needed(sockets) == buckets


def test_the_hash_size_is_read_as_a_count_and_absent_on_old_kernels(tmp_path):
    assert hostlimits.ehash_buckets(write_tree(tmp_path / "a", {
        "net.ipv4.tcp_ehash_entries": "262144"})) == 262144
    # a namespace sharing the host's table shows it negative
    assert hostlimits.ehash_buckets(write_tree(tmp_path / "b", {
        "net.ipv4.tcp_ehash_entries": "-262144"})) == 262144
    assert hostlimits.ehash_buckets(write_tree(tmp_path / "c", {})) is None


def test_tune_notes_a_hash_short_of_the_sockets_with_both_fixes(tmp_path):
    root = make_tree(tmp_path, {"net.ipv4.tcp_ehash_entries": "262144"})
    out = run_tune("--connections", "1000000", "--loopback", "--proc-sys", str(root)).stdout
    row = next(line for line in out.splitlines() if line.startswith("TCP established hash"))
    assert "262,144 buckets" in row and ">= 2,000,000 sockets" in row and row.split()[-1] == "note"
    assert "thash_entries=2097152" in out and "tcp_child_ehash_entries=2097152" in out
    # enough buckets: ok; a kernel that does not say: no row
    root = make_tree(tmp_path / "big", {"net.ipv4.tcp_ehash_entries": "4194304"})
    out = run_tune("--connections", "1000000", "--loopback", "--proc-sys", str(root)).stdout
    assert any(line.startswith("TCP established hash") and line.rstrip().endswith("ok")
               for line in out.splitlines())
    assert "TCP established hash" not in run_tune(
        "--connections", "1000", "--proc-sys", str(make_tree(tmp_path / "old"))).stdout


def test_the_precheck_note_names_the_chains_and_the_flag(tmp_path):
    root = write_tree(tmp_path, {"net.ipv4.tcp_ehash_entries": "262144"})
    note = netns.advice(2_000_000, root)
    assert "262,144 buckets for 2,000,000 sockets" in note and "chains of 7.6" in note
    assert "--netns" in note and "2,097,152" in note
    assert netns.advice(200_000, root) is None


def test_netns_with_a_server_outside_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--netns", "--target", "http://127.0.0.1:9",
         "--server-pid", "1", "--no-plot"], cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 2 and "cannot be reached from there" in result.stderr


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    if hostlimits.ehash_buckets() is None:
        return "Linux before 6.1: no per-namespace established hash"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace here: {probe.stderr.strip()}"
    try:
        with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "r+"):
            pass
    except OSError as exc:
        return f"cannot write net.ipv4.tcp_child_ehash_entries: {exc.strerror}"
    return None


def test_bench_in_its_own_namespace_holds_broadcasts_and_puts_the_sysctl_back(tmp_path):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    before = hostlimits.read_sysctl(netns.CHILD_EHASH)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "flood.bench", "--netns", "--connections", "300", "--rate",
         "2000", "--hold", "0.5", "--interval", "1", "--transport", "sse", "--no-plot",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["held"] == 300 and doc["closed"] == 0
    assert doc["fanout"]["received"] == 300
    buckets = hostlimits.ehash_needed(600)  # both loopback ends
    assert doc["netns"]["ehash_buckets"] == doc["tcp"]["ehash_buckets"] == buckets
    # the host's per-namespace settings came in with it
    assert doc["netns"]["carried"]["net.core.somaxconn"] == hostlimits.read_sysctl(
        "net.core.somaxconn")
    assert f"{buckets:,} buckets (--netns: a namespace of its own)" in result.stdout
    assert hostlimits.read_sysctl(netns.CHILD_EHASH) == before

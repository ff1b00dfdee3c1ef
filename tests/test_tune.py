"""comet.tune and comet.capacity: the table, --apply, the capacity plan, the refusals.

Sysctls live in a fake /proc/sys tree under tmp_path; the tool runs as a real
subprocess (``python -m comet.tune --proc-sys DIR``). Open-files limits are the real
ones, lowered in the child where a test needs them low. The checks the server runs at
start are comet.hostlimits' (tests/test_hostlimits.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from comet import capacity, hostlimits, tune
from tests.million import MILLION
from tests.procsys import write_tree

REPO = Path(__file__).resolve().parent.parent

#: A host tuned well enough for 1,000 connections on port 8000.
TUNED = {
    "fs.file-max": "2466170",
    "fs.nr_open": "1048576",
    "net.ipv4.ip_local_port_range": "1024\t65535",
    "net.ipv4.ip_local_reserved_ports": "8000",
    "net.core.somaxconn": "8192",
    "net.ipv4.tcp_max_syn_backlog": "8192",
    "net.ipv4.tcp_syncookies": "1",
    "net.core.netdev_max_backlog": "2500",
    "net.netfilter.nf_conntrack_max": "262144",
    "net.ipv4.tcp_mem": "287898\t383867\t575796",
    "net.ipv4.tcp_rmem": "4096\t16384\t33554432",
    "net.ipv4.tcp_wmem": "4096\t16384\t4194304",
}


def make_tree(root: Path, changes: dict[str, str | None] | None = None) -> Path:
    """Write TUNED (with changes; None leaves a file out) as a /proc/sys-like tree."""
    return write_tree(root, {**TUNED, **(changes or {})})


def run_tune(*args: str, stdin: str = "", nofile: tuple[int, int] | None = None):
    def lower_limits() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    return subprocess.run([sys.executable, "-m", "comet.tune", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=60, preexec_fn=lower_limits)


def verdicts(stdout: str) -> dict[str, str]:
    """Setting -> verdict, from the table's rows (the verdict is the last word)."""
    return {line.split()[0]: line.split()[-1] for line in stdout.splitlines()
            if re.match(r"(fs|net)\.", line)}


def tree_values(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_table_judges_values_below_at_and_above_what_is_needed(tmp_path):
    root = make_tree(tmp_path, {"net.core.somaxconn": "128",                  # below
                                "fs.file-max": str(1000 + hostlimits.HOST_FILES),  # exactly needed
                                "net.ipv4.tcp_rmem": "4096\t131072\t6291456"})
    result = run_tune("--connections", "1000", "--proc-sys", str(root))
    seen = verdicts(result.stdout)
    assert seen["net.core.somaxconn"] == "CHANGE"       # below
    assert seen["fs.file-max"] == "ok"                  # at
    assert seen["fs.nr_open"] == "ok"                   # above
    assert seen["net.ipv4.tcp_rmem"] == "CHANGE"        # initial receive buffer above 16 KiB
    assert "caps the listen backlog" in result.stdout   # the why, under the row
    assert result.returncode == 1


def test_a_host_tuned_for_n_passes_and_exits_zero(tmp_path):
    result = run_tune("--connections", "1000", "--proc-sys", str(make_tree(tmp_path)))
    assert set(verdicts(result.stdout).values()) == {"ok"}, result.stdout
    assert result.returncode == 0, result.stdout


def test_needed_values_grow_with_connections(tmp_path):
    result = run_tune("--connections", "3000000", "--proc-sys", str(make_tree(tmp_path)))
    seen = verdicts(result.stdout)
    assert seen["fs.file-max"] == "CHANGE" and seen["net.ipv4.tcp_mem"] == "CHANGE"
    assert ">= * 3000000 6000000" in result.stdout


def test_missing_conntrack_is_absent_not_a_failure(tmp_path):
    root = make_tree(tmp_path, {"net.netfilter.nf_conntrack_max": None})
    result = run_tune("--connections", "1000", "--proc-sys", str(root))
    assert verdicts(result.stdout)["net.netfilter.nf_conntrack_max"] == "absent"
    assert result.returncode == 0


def test_apply_writes_exactly_the_changed_values(tmp_path):
    root = make_tree(tmp_path, {"net.core.somaxconn": "128",
                                "net.ipv4.ip_local_reserved_ports": "9000-9001",
                                "net.ipv4.ip_local_port_range": "32768\t60999",
                                "net.ipv4.tcp_mem": "100\t200\t300",
                                "net.ipv4.tcp_wmem": "4096\t65536\t4194304"})
    before = tree_values(root)
    result = run_tune("--connections", "1000", "--proc-sys", str(root), "--apply", "--yes")
    after = tree_values(root)
    changed = {k: v for k, v in after.items() if before[k] != v}
    assert changed == {
        "net/core/somaxconn": "8192\n",
        "net/ipv4/ip_local_reserved_ports": "9000-9001,8000\n",
        "net/ipv4/ip_local_port_range": "1024 65535\n",
        "net/ipv4/tcp_mem": "100 1000 2000\n",
        "net/ipv4/tcp_wmem": "4096 16384 4194304\n",
    }
    assert "changed net.core.somaxconn: 128 -> 8192" in result.stdout
    assert result.returncode == 0
    assert set(verdicts(run_tune("--connections", "1000", "--proc-sys", str(root)).stdout)
               .values()) == {"ok"}


@pytest.mark.parametrize("answer", ["", "n\n", "whatever\n"])
def test_apply_without_consent_writes_nothing(tmp_path, answer):
    root = make_tree(tmp_path, {"net.core.somaxconn": "128"})
    before = tree_values(root)
    result = run_tune("--connections", "1000", "--proc-sys", str(root), "--apply", stdin=answer)
    assert "Write them? [y/N]" in result.stdout
    assert "nothing written" in result.stdout
    assert tree_values(root) == before
    assert result.returncode == 2


def test_apply_after_prompt_yes_writes(tmp_path):
    root = make_tree(tmp_path, {"net.core.somaxconn": "128"})
    result = run_tune("--connections", "1000", "--proc-sys", str(root), "--apply", stdin="y\n")
    assert (root / "net/core/somaxconn").read_text() == "8192\n"
    assert result.returncode == 0


def test_apply_with_nothing_off_says_so(tmp_path):
    result = run_tune("--connections", "1000", "--proc-sys", str(make_tree(tmp_path)), "--apply")
    assert "no sysctl to change" in result.stdout and result.returncode == 0


def test_apply_on_the_real_proc_sys_is_refused_without_root(monkeypatch):
    monkeypatch.setattr(tune.os, "geteuid", lambda: 1000)
    # A sysctl that cannot exist, so even a broken check could write nothing real.
    rows = [hostlimits.Check("comet.test.never", "1", ">= 2", "CHANGE", new="2")]
    out = io.StringIO()
    assert tune.apply(tune.PROC_SYS, rows, yes=True, answers=io.StringIO(), out=out) == 2
    assert "--apply refused: writing /proc/sys needs root" in out.getvalue()


def test_hard_open_files_limit_too_low_says_run_more_processes(tmp_path):
    result = run_tune("--connections", "100000", "--proc-sys", str(make_tree(tmp_path)),
                      nofile=(1024, 4096))
    seen = {line.split()[1]: line.split()[-1] for line in result.stdout.splitlines()
            if line.startswith("RLIMIT_NOFILE")}
    assert seen["soft"] == "CHANGE" and seen["hard"] in ("CANNOT", "CHANGE")
    assert "run 33 processes of <= 3,096 connections each (--workers 33" in result.stdout
    assert "python -m comet.server --workers 33 --redis URL" in result.stdout
    assert result.returncode == 1


def test_workers_bring_the_per_process_need_under_the_limit(tmp_path):
    result = run_tune("--connections", "100000", "--workers", "33", "--proc-sys",
                      str(make_tree(tmp_path)), nofile=(4096, 4096))
    assert all(line.split()[-1] == "ok" for line in result.stdout.splitlines()
               if line.startswith("RLIMIT_NOFILE")), result.stdout


def test_capacity_plan_comes_from_bench_json(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"loopback": True, "transports": {
        "test": {"server_kb_per_conn": 2.0, "kernel_kb_per_conn": 8.0},
        "events": {"server_kb_per_conn": 3.0, "kernel_kb_per_conn": 8.0}}}))
    result = run_tune("--connections", "1000000", "--proc-sys", str(make_tree(tmp_path / "sys")),
                      "--from", str(bench), nofile=(20000, 20000))
    out = result.stdout
    assert "server userland by path  events 3 KB, test 2 KB; poll, ws: not measured yet" in out
    # the worst measured path, since tune does not know which the clients use
    assert "server userland, events  1,000,000 x 3 KB = 2.86 GiB  [bench.json: " in out
    assert "1,000,000 sockets (server end) x 4 KB = 3.81 GiB" in out      # 8 KB over two ends
    # 53 workers and their master over a Redis; the file has no figure for those: defaults
    assert "Redis, per id            1,000,000 x 0.22 KB = 0.21 GiB  [default: " in out
    assert "server processes' own    54 x 11.4 MiB = 0.60 GiB  [default: " in out
    assert "Redis's own              1 x 15.4 MiB = 0.02 GiB" in out
    assert "flood" not in out.split("Redis's own")[1].split("socket buffers")[0]  # elsewhere
    assert "total while clients read 7.50 GiB; with the 10% margin 8.25 GiB" in out
    assert "server processes         53" in out                          # 1e6 / 19,000
    assert "flood source addresses   16" in out                          # 1e6 / 64,512 ports
    assert "flood processes: 51 (64 files kept each)" in out             # 1e6 / 19,936
    assert "more than one: --workers 53 --redis URL, one server through Redis" in out


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"kernel_kb_per_conn": 4}', "no server_kb_per_conn"),
    ('{"server_kb_per_conn": -3}', "must be a positive number"),
    ('{"transports": {"ws": {"kernel_kb_per_conn": 4}}}', "'ws' has no server_kb_per_conn"),
])
def test_bad_bench_json_is_refused_with_the_reason(tmp_path, content, message):
    bench = tmp_path / "bench.json"
    bench.write_text(content)
    result = run_tune("--proc-sys", str(make_tree(tmp_path / "sys")), "--from", str(bench))
    assert message in result.stderr and result.returncode == 2
    assert result.stdout == ""


def test_missing_bench_json_and_bad_flags_are_refused(tmp_path):
    assert "cannot read" in run_tune("--from", str(tmp_path / "nope.json")).stderr
    assert run_tune("--connections", "0").returncode == 2
    assert run_tune("--connections", "many").returncode == 2


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "read-only here (a container)"),
    (errno.EPERM, "not permitted"),
    (errno.EACCES, "not permitted"),
    (errno.EINVAL, "rejected the value"),
])
def test_write_refusals_say_what_to_do_instead(code, words):
    row = hostlimits.Check("net.core.somaxconn", "128", ">= 8192", "CHANGE", new="8192")
    message = tune.write_refusal(OSError(code, os.strerror(code)), row)
    assert words in message
    if code != errno.EINVAL:
        assert "docker run --sysctl net.core.somaxconn=8192" in message


def test_rules_merge_towards_the_needed_value_only_where_off():
    assert tune.AT_LEAST.merge("287898 383867 575796", "* 1000000 2000000") == \
        "287898 1000000 2000000"
    assert tune.AT_MOST.merge("4096 131072 33554432", "4096 16384 *") == "4096 16384 33554432"
    assert tune.COVERS.ok("1024 65535", "1024 65535")
    assert not tune.COVERS.ok("1025 65535", "1024 65535")
    assert tune.INCLUDES.ok("7000-9000", "8000") and tune.INCLUDES.ok("", "")
    assert not tune.INCLUDES.ok("7000-7999,8001", "8000")


def test_table_checks_what_the_server_checks_at_start_at_the_same_values():
    decls = {decl.name: decl for decl in tune.SYSCTLS}
    for n in (1000, 100_000):
        for floor in hostlimits.AT_START:
            decl = decls[floor.name]
            assert decl.needed(tune.Target(n)) == str(floor.needed(n, n)), floor.name
            assert decl.why == floor.why and decl.optional == floor.optional


def sysctl_conf() -> dict[str, str]:
    lines = (REPO / "conf" / "sysctl.conf").read_text().splitlines()
    return dict(map(str.strip, line.split("=", 1)) for line in lines
                if line.strip() and not line.startswith("#"))


def test_conf_sysctl_conf_holds_every_setting_at_the_value_a_million_need():
    conf = sysctl_conf()
    assert set(conf) == {decl.name for decl in tune.SYSCTLS}
    target = tune.Target(1_000_000)
    for decl in tune.SYSCTLS:
        assert decl.rule.ok(" ".join(conf[decl.name].split()), decl.needed(target)), decl.name


def test_conf_open_files_limits_fit_under_nr_open():
    nr_open = int(sysctl_conf()["fs.nr_open"])
    service = (REPO / "conf" / "comet.service").read_text()
    assert int(re.search(r"^LimitNOFILE=(\d+)", service, re.M).group(1)) <= nr_open
    limits = [line.split() for line in (REPO / "conf" / "limits.conf").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert limits and all(int(value) <= nr_open for *_, value in limits)


def test_conf_gunicorn_uses_comets_worker_one_worker_and_room_for_its_own_files(monkeypatch):
    """One worker, whatever COMET_WORKERS says: comet.wsgi refuses a second one
    (tests/test_gunicorn.py), so the configuration offers no knob for it."""
    path = str(REPO / "conf" / "gunicorn.conf.py")
    settings: dict = {}
    monkeypatch.setenv("COMET_WORKERS", "2")
    exec(compile(Path(path).read_text(), path, "exec"), settings)
    assert settings["worker_class"] == "comet.gunicorn.Worker" and settings["workers"] == 1
    assert settings["worker_connections"] + hostlimits.SERVER_FD_MARGIN <= 20000


def test_memory_short_and_processes_beyond_cores_are_flagged():
    rows = {r.setting: r for r in tune.host_rows(tune.Target(1_000_000), capacity.DEFAULT_FIGURES,
                                                 available=1024 * 1024, hard=20000)}
    assert rows["memory available"].verdict == "SHORT"
    # the worst path (poll, 0.9 KB), 1e6 server sockets x 5 KB, 53 workers + master, Redis:
    # 6.45 GiB, and 10% more
    assert rows["memory available"].needed == ">= 7.10 GiB"
    assert rows["cores"].needed == "53 process(es)"


def test_loopback_counts_both_ends_of_every_connection(tmp_path):
    result = run_tune("--connections", "100000", "--loopback", "--proc-sys",
                      str(make_tree(tmp_path)))
    assert f">= {200_000 + hostlimits.HOST_FILES}" in result.stdout           # fs.file-max
    assert "200,000 sockets (both ends: the flood runs here)" in result.stdout


def test_the_plan_for_the_million_counts_every_part_and_says_where_each_is_from(tmp_path):
    bench = tmp_path / "b1m.json"
    bench.write_text(json.dumps(MILLION))
    result = run_tune("--connections", "1000000", "--loopback", "--workers", "56", "--proc-sys",
                      str(make_tree(tmp_path / "sys")), "--from", str(bench),
                      nofile=(20000, 20000))
    out = result.stdout
    assert "57 server process(es), Redis, 51 flood processes here" in out
    assert "server userland, test    1,000,000 x 0.428 KB = 0.41 GiB  " \
           "[b1m.json: server_pss_kb_per_conn]" in out
    assert "Redis, per id            1,000,000 x 0.222 KB = 0.21 GiB" in out
    assert "flood, per connection    1,000,000 x 0.319 KB = 0.30 GiB" in out
    assert "2,000,000 sockets (both ends: the flood runs here) x 5 KB = 9.54 GiB" in out
    assert "server processes' own    57 x 11.4 MiB = 0.63 GiB" in out
    assert "flood processes' own     51 x 25.9 MiB + 1,000,000 URLs x 0.102 KB (each in one " \
           "process's share) = 1.39 GiB" in out
    assert "grows with connections   10.46 GiB" in out
    assert "10.44 GiB grew for 998,466 held" in out and "this model there: 10.44 GiB" in out
    assert "total while clients read 12.50 GiB; with the 10% margin 13.74 GiB" in out
    assert "not measured yet" in out and "test: not measured" not in out  # stream is /test/

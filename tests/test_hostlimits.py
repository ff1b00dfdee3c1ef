"""comet.hostlimits: open files, sysctls, ephemeral ports, the server's check at start,
and who may import it.

Sysctls live in a fake /proc/sys tree under tmp_path. Open-files limits are the real
ones: a test that needs them low runs in a child process that lowers its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comet import hostlimits
from tests.procsys import write_tree

REPO = Path(__file__).resolve().parent.parent

#: Enough for the few connections these tests ask for, with port 8000 reserved.
TUNED = {
    "fs.file-max": "2466170",
    "net.core.somaxconn": "8192",
    "net.netfilter.nf_conntrack_max": "262144",
    "net.ipv4.ip_local_port_range": "1024\t65535",
    "net.ipv4.ip_local_reserved_ports": "8000",
}


def sys_tree(root: Path, changes: dict[str, str | None] | None = None) -> Path:
    """TUNED (with changes; None leaves a file out) as a /proc/sys-like tree under root."""
    return write_tree(root, {**TUNED, **(changes or {})})


def in_child(code: str, nofile: tuple[int, int] | None = None) -> object:
    """Run ``code`` in a fresh interpreter (limits lowered first) and return what it prints."""
    def lower_limits() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, timeout=60,
                            capture_output=True, text=True, preexec_fn=lower_limits)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- open files ---------------------------------------------------------------------------

def test_processes_needed_keeps_each_kind_of_process_its_own_margin():
    assert hostlimits.connections_per_process(20_000) == 19_000
    assert hostlimits.processes_needed(1_000_000, 20_000) == 53            # 1e6 / 19,000
    assert hostlimits.processes_needed(19_000, 20_000) == 1
    assert hostlimits.processes_needed(19_001, 20_000) == 2
    flood = hostlimits.FLOOD_FD_MARGIN
    assert hostlimits.connections_per_process(20_000, flood) == 19_936
    assert hostlimits.processes_needed(1_000_000, 20_000, flood) == 51     # 1e6 / 19,936
    assert hostlimits.open_files_needed(5000) == 6000


def test_a_limit_below_the_margin_still_means_some_connections_and_one_process():
    assert hostlimits.connections_per_process(500) == 1
    assert hostlimits.processes_needed(0, 20_000) == 1


def test_raise_open_files_limit_lifts_the_soft_limit_to_the_hard_one():
    got = in_child("""
        import json, resource
        from comet import hostlimits
        print(json.dumps([hostlimits.raise_open_files_limit(),
                          resource.getrlimit(resource.RLIMIT_NOFILE)]))
    """, nofile=(1024, 4096))
    assert got == [4096, [4096, 4096]]


def test_files_system_wide_are_the_sockets_and_each_process_s_margin():
    assert hostlimits.files_needed(2_000_000, 57, 51) == 2_000_000 + 57_000 + 51 * 64


# -- sysctls, ephemeral ports, memory, backlog ---------------------------------------------------

def test_files_in_use_and_memory_available_are_this_hosts(tmp_path):
    nr = (Path("/proc/sys/fs/file-nr").read_text().split())
    assert hostlimits.files_in_use() == pytest.approx(int(nr[0]), rel=0.5)
    assert 0 < hostlimits.memory_available_kib() < 2 ** 40
    (tmp_path / "meminfo").write_text("MemTotal:       24000000 kB\n")   # before Linux 3.14
    assert hostlimits.memory_available_kib(tmp_path / "meminfo") is None
    assert hostlimits.memory_available_kib(tmp_path / "absent") is None


def test_the_backlog_holds_two_seconds_of_arrivals_never_more_than_will_come():
    assert hostlimits.backlog_needed(3500, 1_000_000) == 7000
    assert hostlimits.backlog_needed(2000, 200) == 200
    assert hostlimits.backlog_needed(0.1, 10) == 1


def test_read_sysctl_collapses_whitespace_and_says_none_when_absent(tmp_path):
    root = sys_tree(tmp_path, {"net.ipv4.tcp_mem": "1\t 2\t3\n"})
    assert hostlimits.read_sysctl("net.ipv4.tcp_mem", root) == "1 2 3"
    assert hostlimits.read_sysctl("net.ipv4.no_such_thing", root) is None


def test_ephemeral_ports_are_read_or_none(tmp_path):
    assert hostlimits.ephemeral_ports(sys_tree(tmp_path / "a")) == (1024, 65535)
    assert hostlimits.ephemeral_ports(tmp_path / "missing") is None
    garbled = sys_tree(tmp_path / "b", {"net.ipv4.ip_local_port_range": "32768"})
    assert hostlimits.ephemeral_ports(garbled) is None


def test_ports_per_source_and_source_addresses_follow_the_range():
    assert hostlimits.ports_per_source(hostlimits.LINUX_EPHEMERAL_PORTS) == 28_232
    assert hostlimits.source_addresses_needed(1_000_000, (1024, 65535)) == 16  # 64,512 each
    assert hostlimits.source_addresses_needed(28_232, (32768, 60999)) == 1
    assert hostlimits.source_addresses_needed(28_233, (32768, 60999)) == 2


def test_kernel_port_lists_are_parsed():
    assert hostlimits.ports("8000, 9000-9002") == {8000, 9000, 9001, 9002}
    assert hostlimits.ports("") == set()


# -- the server's check at start ------------------------------------------------------------

def test_startup_problems_is_empty_on_a_tuned_host(tmp_path):
    assert hostlimits.startup_problems(10, 8000, proc_sys=sys_tree(tmp_path)) == []


def test_startup_problems_names_the_port_in_the_ephemeral_range(tmp_path):
    root = sys_tree(tmp_path, {"net.ipv4.ip_local_reserved_ports": ""})
    problems = hostlimits.startup_problems(10, 8000, proc_sys=root)
    assert len(problems) == 1 and "port 8000 is inside" in problems[0]
    assert "ip_local_reserved_ports=8000" in problems[0]
    assert hostlimits.startup_problems(10, 0, proc_sys=root) == []          # any free port
    assert hostlimits.startup_problems(10, 80, proc_sys=root) == []         # below the range


def test_startup_problems_names_low_tables_and_backlog_with_the_fix(tmp_path):
    root = sys_tree(tmp_path, {"net.core.somaxconn": "128", "fs.file-max": "5000",
                               "net.netfilter.nf_conntrack_max": "100"})
    problems = hostlimits.startup_problems(10, 8000, proc_sys=root)
    assert problems == [
        "fs.file-max = 5000, needs >= 65546 for --max-connections 10: every socket is a file, "
        "system-wide; both ends count when the flood runs here (sysctl -w fs.file-max='65546')",
        "net.core.somaxconn = 128, needs >= 8192 for --max-connections 10: caps the listen "
        "backlog: a burst of new connections beyond it is dropped "
        "(sysctl -w net.core.somaxconn='8192')",
        "net.netfilter.nf_conntrack_max = 100, needs >= 65546 for --max-connections 10: one "
        "conntrack entry per connection while netfilter tracks; full table drops SYNs "
        "(sysctl -w net.netfilter.nf_conntrack_max='65546')",
    ]


@pytest.mark.parametrize("value", [None, "", "lots"])
def test_startup_problems_skips_what_it_cannot_read(tmp_path, value):
    root = sys_tree(tmp_path, {"net.netfilter.nf_conntrack_max": value})
    assert hostlimits.startup_problems(10, 8000, proc_sys=root) == []


def test_startup_problems_survives_an_unreadable_tree(tmp_path):
    assert hostlimits.startup_problems(10, 8000, proc_sys=tmp_path / "missing") == []


def test_startup_problems_names_open_files_limits_and_the_way_out(tmp_path):
    problems = in_child(f"""
        import json
        from comet import hostlimits
        print(json.dumps(hostlimits.startup_problems(5000, 8000, proc_sys={str(tmp_path)!r})))
    """, nofile=(1024, 4096))
    soft, hard = problems
    assert soft == ("RLIMIT_NOFILE soft = 1024, needs >= 6000 for --max-connections 5000: "
                    "per-process open files: ulimit -n 4096, LimitNOFILE in conf/comet.service, "
                    "or conf/limits.conf")
    assert hard.startswith("RLIMIT_NOFILE hard = 4096, needs >= 6000 for --max-connections 5000")
    assert "run 2 processes of <= 3,096 connections each (--workers 2 checks that)" in hard
    assert "python -m comet.server --workers 2 --redis URL" in hard


# -- who imports whom -------------------------------------------------------------------------

def comet_modules_after(code: str) -> list[str]:
    return in_child(code + """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m == "comet" or m.startswith("comet."))))
""")


def test_hostlimits_imports_nothing_else_of_comet():
    assert comet_modules_after("import comet.hostlimits") == ["comet", "comet.hostlimits"]


def test_capacity_imports_only_hostlimits_of_comet():
    assert comet_modules_after("import comet.capacity") == \
        ["comet", "comet.capacity", "comet.hostlimits"]


def test_flood_imports_only_hostlimits_and_capacity_of_comet():
    """bench's pre-check uses the capacity model; neither is the server's code."""
    loaded = comet_modules_after("""
import importlib, pkgutil, flood
for module in pkgutil.iter_modules(flood.__path__):
    importlib.import_module(f"flood.{module.name}")
""")
    assert loaded == ["comet", "comet.capacity", "comet.hostlimits"]


def test_the_server_imports_neither_tune_nor_capacity():
    loaded = comet_modules_after("import comet.server")
    assert "comet.hostlimits" in loaded
    assert "comet.tune" not in loaded and "comet.capacity" not in loaded

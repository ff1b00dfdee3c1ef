"""``flood.bench --netns``: the whole run in a network namespace of its own, whose TCP
established hash has a bucket for each of its sockets.

Why: every segment the host receives finds its socket by walking one chain of the
established hash, which the kernel sizes at boot from RAM (262,144 buckets on this
24 GiB machine; ``thash_entries=`` on the kernel command line sets it). A million
loopback connections are two million sockets: chains of ~8, walked for every message
and every ACK, each step a cache miss. Since Linux 6.1 a network namespace created
after ``net.ipv4.tcp_child_ehash_entries`` is set gets a table of that size, no reboot
needed (docs/tuning.rst; the million's broadcast measured both ways in
docs/benchmarks.rst).

How: the bench re-runs itself under ``unshare --net`` (util-linux; root, or
CAP_SYS_ADMIN) with the sysctl set, and puts the host's value back as soon as the
namespace exists. Inside, before anything starts, :func:`enter` brings the loopback
interface up (a new namespace's is down) and copies the host's per-namespace sysctls
that a run depends on (:data:`CARRIED`): the listen backlog, the ephemeral ports, the
socket buffers. Everything the run starts lives in the namespace and the namespace
goes with its last process: the bench's cleanup is unchanged. Only 127.0.0.0/8 is
there: ``--target`` (a server outside) cannot be reached from it and is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from comet import hostlimits

#: set in the re-run's environment: the host's sysctls to carry in, as JSON
INSIDE = "FLOOD_BENCH_NETNS"
#: per-namespace sysctls the run depends on, carried from the host into the namespace
CARRIED = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
           "net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports",
           "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_syncookies",
           "net.ipv4.tcp_tw_reuse")
CHILD_EHASH = "net.ipv4.tcp_child_ehash_entries"
#: seconds the re-run may take to make its namespace before the host's value goes back
CREATE_TIMEOUT = 30.0

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sh22x")  # struct ifreq: the name, then ifr_flags in the union


class NetnsError(RuntimeError):
    """The namespace cannot be made here; the message names the cause and the fix."""


def inside() -> bool:
    return INSIDE in os.environ


def run_outside(argv: list[str], sockets: int, proc_sys=hostlimits.PROC_SYS) -> int:
    """Re-run ``python -m flood.bench argv`` in a new namespace sized for ``sockets``;
    its exit status. Raises :class:`NetnsError` before starting anything it cannot do."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise NetnsError("--netns needs util-linux's unshare, not found on PATH")
    if hostlimits.ehash_buckets(proc_sys) is None:
        raise NetnsError("--netns needs Linux 6.1 or later (net.ipv4.tcp_ehash_entries is "
                         "absent: a namespace cannot have a hash of its own)")
    carried = {name: value for name in CARRIED
               if (value := hostlimits.read_sysctl(name, proc_sys)) is not None}
    buckets = hostlimits.ehash_needed(sockets)
    previous = hostlimits.read_sysctl(CHILD_EHASH, proc_sys) or "0"
    try:
        _write(CHILD_EHASH, str(buckets), proc_sys)
    except OSError as exc:
        raise NetnsError(f"--netns: cannot set {CHILD_EHASH} ({exc.strerror}): it needs root "
                         "(CAP_SYS_ADMIN); run without --netns, or as root") from None
    env = dict(os.environ, **{INSIDE: json.dumps(carried)})
    try:
        child = subprocess.Popen([unshare, "--net", "--", sys.executable, "-m", "flood.bench",
                                  *argv], env=env)
        _await_namespace(child)
    finally:
        _write(CHILD_EHASH, previous, proc_sys)
    # Ctrl-C reaches the re-run through the terminal's process group; it cleans up and
    # ends, and this process reports its status. SIGTERM (a timeout) is passed on.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _await_namespace(child: subprocess.Popen) -> None:
    """Until ``child`` is in a namespace other than ours (or has ended): only then may
    the host's value of the sysctl go back."""
    ours = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + CREATE_TIMEOUT
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{child.pid}/ns/net") != ours:
                return
        except OSError:
            return  # it ended meanwhile
        time.sleep(0.005)


def enter(proc_sys=hostlimits.PROC_SYS) -> dict:
    """In the re-run, before anything starts: loopback up, the host's sysctls carried in.
    What the JSON records: the namespace's hash and what was carried."""
    carried = json.loads(os.environ[INSIDE])
    loopback_up()
    for name, value in carried.items():
        try:
            _write(name, value, proc_sys)
        except OSError as exc:
            print(f"bench: --netns: could not carry {name} = {value} in ({exc.strerror})",
                  file=sys.stderr)
    return {"ehash_buckets": hostlimits.ehash_buckets(proc_sys), "carried": carried}


def loopback_up() -> None:
    """``ip link set lo up`` with one ioctl, so the run needs no iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def advice(sockets: int, proc_sys=hostlimits.PROC_SYS) -> str | None:
    """A note for the pre-check when the hash is short of the run's sockets, else None."""
    have = hostlimits.ehash_buckets(proc_sys)
    if have is None or have >= sockets:
        return None
    return (f"note: the TCP established hash has {have:,} buckets for {sockets:,} sockets "
            f"(chains of {sockets / have:.1f}, walked for every segment); --netns (root) runs "
            f"in a namespace with {hostlimits.ehash_needed(sockets):,}")


def _write(name: str, value: str, proc_sys) -> None:
    hostlimits.sysctl_path(name, proc_sys).write_text(value)

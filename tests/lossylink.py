"""A slow, lossy link to a server in a network namespace of its own, made by the test.

A veth pair joins the test's namespace to a namespace made for the test, where
the server runs under ``ip netns exec``, over a /30 from the documentation
ranges (TEST-NET-2 and -3, then -1: routed nowhere), the first that no address
of this host overlaps (a cloud machine may have one of them on its own link).
Each end's queue is shaped:

* with ``tc netem`` where the kernel has it (``sch_netem``): delay with jitter
  and random loss;
* else with ``tc tbf`` (every kernel here has it): a narrow rate and a short
  queue, so that bursts wait (delay) and what overflows is dropped (loss).

Either way the loss is real and counted by the kernel: :meth:`dropped` reads the
qdiscs' drop counters, so a test can show its fault happened. Needs root
(CAP_NET_ADMIN); where the host cannot make it, :func:`problem` says why.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess

NETEM = ("netem", "delay", "40ms", "10ms", "loss", "2%")
TBF = ("tbf", "rate", "1mbit", "burst", "4kb", "limit", "6kb")


#: where the link's /30 may come from
RANGES = ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of :data:`RANGES` that overlaps none of this host's IPv4 networks."""
    taken = [ipaddress.ip_interface(m).network for m in
             re.findall(r"inet (\S+)", _run("ip", "-4", "-o", "addr", "show").stdout)]
    for subnet in (s for r in RANGES for s in ipaddress.ip_network(r).subnets(new_prefix=30)):
        if not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise RuntimeError("every documentation /30 is in use on this host")


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def missing_tools() -> str | None:
    """What of iproute2 is not installed (Debian: ``apt-get install iproute2``), or None."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not on PATH (iproute2)" if missing else None


def problem() -> str | None:
    """Why a lossy link cannot be made here, or None: the tools, or the privilege."""
    if missing_tools():
        return missing_tools()
    if os.geteuid() != 0:
        return "not root: making a namespace and a veth pair needs CAP_NET_ADMIN"
    probe = _run("unshare", "--net", "ip", "link", "add", "name", "probea", "type", "veth",
                 "peer", "name", "probeb")
    if probe.returncode != 0:
        return f"cannot make a veth pair in a namespace: {probe.stderr.strip()}"
    return None


class LossyLink:
    """The namespace, the veth pair and the shaping; :meth:`close` removes them all."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = f"comet-lossy-{tag}"
        self.outer, self.inner = f"cmtl{tag}a", f"cmtl{tag}b"
        self.subnet = free_subnet()
        client, server = list(self.subnet.hosts())
        self.client_address, self.server_address = str(client), str(server)
        self.shaping: tuple[str, ...] = ()

    def open(self) -> LossyLink:
        ns, outer, inner = self.ns, self.outer, self.inner
        steps = [
            ("ip", "netns", "add", ns),
            ("ip", "link", "add", outer, "type", "veth", "peer", "name", inner),
            ("ip", "link", "set", inner, "netns", ns),
            ("ip", "addr", "add", f"{self.client_address}/30", "dev", outer),
            ("ip", "link", "set", outer, "up"),
            ("ip", "-n", ns, "addr", "add", f"{self.server_address}/30", "dev", inner),
            ("ip", "-n", ns, "link", "set", inner, "up"),
            ("ip", "-n", ns, "link", "set", "lo", "up"),
        ]
        try:
            for step in steps:
                self._must(*step)
            self.shaping = NETEM if self._shape(NETEM) else TBF
            if self.shaping is TBF:
                self._must("tc", "qdisc", "add", "dev", outer, "root", *TBF)
                self._must("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", inner,
                           "root", *TBF)
        except BaseException:
            self.close()
            raise
        return self

    def _shape(self, how: tuple[str, ...]) -> bool:
        if _run("tc", "qdisc", "add", "dev", self.outer, "root", *how).returncode != 0:
            return False
        self._must("ip", "netns", "exec", self.ns, "tc", "qdisc", "add", "dev", self.inner,
                   "root", *how)
        return True

    def _must(self, *cmd: str) -> None:
        done = _run(*cmd)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command in the server's namespace."""
        return ("ip", "netns", "exec", self.ns)

    def dropped(self) -> int:
        """Packets the shaping dropped, both ways, so far."""
        total = 0
        for cmd in (("tc", "-s", "qdisc", "show", "dev", self.outer),
                    ("ip", "netns", "exec", self.ns, "tc", "-s", "qdisc", "show", "dev",
                     self.inner)):
            total += sum(int(n) for n in re.findall(r"dropped (\d+)", _run(*cmd).stdout))
        return total

    def close(self) -> None:
        _run("ip", "link", "del", self.outer)  # its peer goes with it
        _run("ip", "netns", "del", self.ns)

    def __enter__(self) -> LossyLink:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

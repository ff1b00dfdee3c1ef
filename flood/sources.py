"""Local source addresses for the flood's sockets (``--source``).

One source address gives one ephemeral port range per destination, about 28k ports
here (``ip_local_port_range`` 32768-60999). More connections to one server need more
source addresses: ``127.0.0.2-127.0.0.20``. Each socket binds its address with
``IP_BIND_ADDRESS_NO_PORT`` so the kernel picks the port at ``connect()``, knowing the
whole 4-tuple; without it ``bind(addr, 0)`` reserves a port for every destination and
the range runs out at ~28k per address however many servers there are.
"""

from __future__ import annotations

import ipaddress
import socket

from comet.hostlimits import LINUX_EPHEMERAL_PORTS, ephemeral_ports, ports_per_source

#: Linux's IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h); Python does not name it.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: A range larger than this is surely a typo.
MAX_SOURCES = 65536


def parse_sources(spec: str) -> list[str]:
    """``A``, ``A,B``, ``A-B`` (inclusive), ``A-N`` (last octet) or ``net/len``; order kept."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "/" in part:
            net = ipaddress.IPv4Network(part, strict=False)
            hosts = list(net.hosts()) or [net.network_address]
            out.extend(str(a) for a in hosts[:MAX_SOURCES])
        elif "-" in part:
            lo_text, hi_text = part.split("-", 1)
            lo = ipaddress.IPv4Address(lo_text)
            if "." not in hi_text:
                hi_text = lo_text.rsplit(".", 1)[0] + "." + hi_text
            hi = ipaddress.IPv4Address(hi_text)
            if hi < lo or int(hi) - int(lo) >= MAX_SOURCES:
                raise ValueError(f"bad source range {part!r}")
            out.extend(str(ipaddress.IPv4Address(i)) for i in range(int(lo), int(hi) + 1))
        else:
            out.append(str(ipaddress.IPv4Address(part)))
    if not out:
        raise ValueError("no source addresses given")
    return out


def bind_source(sock: socket.socket, address: str) -> None:
    """Bind to ``address`` leaving the port to ``connect()`` (see the module docstring)."""
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass  # not Linux >= 4.2: bind still works, with the smaller port space
    sock.bind((address, 0))


def port_warning(per_destination: dict[str, int], sources: list[str]) -> str:
    """Say so when one source address would need more than half the ephemeral range for
    one destination: Linux's connect() tries even ports first, and once they are taken
    each connect() scans them all before an odd one (measured here: ~18 us -> ~650 us
    per connect() past 14,116 connections, docs/flood.rst). Empty when all is well."""
    lo, hi = span = ephemeral_ports() or LINUX_EPHEMERAL_PORTS
    whole = ports_per_source(span)
    half = whole // 2
    per_source = max(len(sources), 1)
    lines = []
    for dest, count in sorted(per_destination.items()):
        share = -(-count // per_source)
        if share > whole:
            lines.append(f"{count} connections to {dest} need {share} ports per source address, "
                         f"more than ip_local_port_range {lo}-{hi} has ({whole}): the rest will "
                         f"fail; add source addresses (--source 127.0.0.2-127.0.0.N)")
        elif share > half:
            lines.append(f"{count} connections to {dest} from {per_source} source address(es): "
                         f"past {half} per source (the even half of ip_local_port_range "
                         f"{lo}-{hi}) each connect() costs ~35x more and the ramp slows; "
                         f"add source addresses (--source 127.0.0.2-127.0.0.N)")
    return "\n".join(lines)

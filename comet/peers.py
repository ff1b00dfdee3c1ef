"""Who may read what the server says about itself: ``--metrics-from``.

``/metrics`` and ``/stats`` tell a stranger how many clients a server holds,
how much memory it has left and which limits it is hitting: an operator's
business, so by default only loopback may ask. :class:`Peers` is the parsed
setting, a short list of networks; the app asks it one thing per request,
whether the peer's address is in it. Nothing here counts or logs: a refusal
goes through the app's ``BadRequest`` path like any other.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: who may ask by default: the loopback networks of both families
LOOPBACK = "127.0.0.0/8,::1"


class Peers:
    """A list of addresses and networks (CIDR), and whether a peer is in it."""

    __slots__ = ("networks",)

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks

    @classmethod
    def parse(cls, text: str) -> Peers:
        """``"127.0.0.0/8, ::1, 10.1.2.3"``: comma-separated, each an address or a CIDR.

        ``0.0.0.0/0,::/0`` lets anyone ask; an empty list is refused rather
        than taken to mean anyone (or no one) by accident.
        """
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise ValueError("must name at least one address or network "
                             "(0.0.0.0/0,::/0 for anyone)")
        networks = []
        for position, part in enumerate(parts, 1):
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"entry {position} ({part[:60]!r}) is not an address or "
                                 "a network such as 10.0.0.0/8") from None
        return cls(tuple(networks))

    def __contains__(self, address: str | None) -> bool:
        """Is the peer ``address`` (a ``REMOTE_ADDR``) in the list? An IPv4 peer seen
        on an IPv6 socket (``::ffff:10.1.2.3``) counts as its IPv4 address; a peer
        without an IP address (a Unix socket) is in no list."""
        try:
            ip = ipaddress.ip_address((address or "").split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def __str__(self) -> str:
        return ",".join(map(str, self.networks))

    def __repr__(self) -> str:
        return f"Peers({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peers) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

"""redis-py connections on gevent's sockets, without monkey-patching the process.

comet does not monkey-patch: its sleeping connections write to stdlib sockets
in non-blocking mode from the event loop's callbacks, and patching would turn
every one of them into a gevent socket with watchers of its own. redis-py,
left alone, would then block the whole process on every Redis round trip. So
the connections below are redis-py's own (its protocol parser, its
authentication, its retries), with one method changed: ``_connect`` makes a
gevent socket, so a Redis round trip yields to the other greenlets instead
of freezing them (``tests/test_redis_broker.py`` stops Redis with SIGSTOP and
checks that streams still tick). Under gunicorn's gevent worker, which does
monkey-patch, they are simply what redis-py would have made anyway.

``rediss://`` (TLS) uses gevent's SSL context with the common options
(``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname``, ``ssl_min_version``, ``ssl_ciphers``); redis-py's
OCSP checks are refused, not silently skipped.
"""

from __future__ import annotations

import redis
from gevent import socket, ssl
from redis.backoff import NoBackoff
from redis.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.exceptions import RedisError
from redis.retry import Retry


def _gevent_tcp(conn: Connection):
    """redis-py's TCP connect (IPv4/IPv6, NODELAY, keepalive, timeouts) on a gevent socket."""
    err: OSError | None = None
    for family, socktype, proto, _, address in socket.getaddrinfo(
            conn.host, conn.port, conn.socket_type, socket.SOCK_STREAM):
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if conn.socket_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in conn.socket_keepalive_options.items():
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
            sock.settimeout(conn.socket_connect_timeout)
            sock.connect(address)
            sock.settimeout(conn.socket_timeout)
            return sock
        except OSError as exc:
            err = exc
            sock.close()
    raise err if err is not None else OSError(f"no address for {conn.host}:{conn.port}")


class GeventConnection(Connection):
    """A TCP connection to Redis whose waits yield to other greenlets."""

    def _connect(self):
        return _gevent_tcp(self)


class GeventUnixConnection(UnixDomainSocketConnection):
    """A unix-socket connection to Redis whose waits yield to other greenlets."""

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.socket_connect_timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(self.socket_timeout)
        return sock


class GeventSSLConnection(SSLConnection):
    """A TLS connection to Redis (``rediss://``) on gevent's socket and SSL context."""

    def _connect(self):
        if self.ssl_validate_ocsp or self.ssl_validate_ocsp_stapled:
            raise RedisError("comet's Redis connections do not do OCSP validation")
        sock = _gevent_tcp(self)
        try:
            # gevent's SSLContext, built here: ssl.create_default_context() (gevent's
            # name for it too) makes the stdlib's, whose sockets would block the loop.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_default_certs()
            context.check_hostname = self.check_hostname
            context.verify_mode = self.cert_reqs
            if self.certfile or self.keyfile:
                context.load_cert_chain(certfile=self.certfile, keyfile=self.keyfile,
                                        password=self.certificate_password)
            if self.ca_certs is not None or self.ca_path is not None or self.ca_data is not None:
                context.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path,
                                              cadata=self.ca_data)
            if self.ssl_min_version is not None:
                context.minimum_version = self.ssl_min_version
            if self.ssl_ciphers:
                context.set_ciphers(self.ssl_ciphers)
            return context.wrap_socket(sock, server_hostname=self.host)
        except (OSError, RedisError):
            sock.close()
            raise


#: redis-py's class for a URL scheme -> ours
_GEVENT_CLASSES = {
    Connection: GeventConnection,
    UnixDomainSocketConnection: GeventUnixConnection,
    SSLConnection: GeventSSLConnection,
}


def connection_options(url: str, **overrides) -> dict:
    """redis-py's connection keywords for ``url`` (``redis://``, ``rediss://``,
    ``unix://``; password, user and db from it), with our gevent classes."""
    options = parse_url(url)
    options["connection_class"] = _GEVENT_CLASSES[options.get("connection_class", Connection)]
    # No retries inside redis-py: a failed call is the broker's to answer (a 503 at
    # once, a reconnect with backoff), never seconds of silent retrying per request.
    options["retry"] = Retry(NoBackoff(), 0)
    options.update(overrides)
    return options


def client(url: str, max_connections: int = 64, **overrides) -> redis.Redis:
    """A redis-py client for ``url`` whose connections yield to other greenlets."""
    pool = ConnectionPool(max_connections=max_connections, **connection_options(url, **overrides))
    return redis.Redis(connection_pool=pool)

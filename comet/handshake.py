"""The WebSocket opening handshake, judged before gevent-websocket sees it.

gevent-websocket 0.10.1 (unmaintained) refuses a bad handshake itself, and
badly: its bodies are ``str``, which pywsgi cannot write (a 500, or a 400 cut
short, and a traceback in the log); it answers HTTP/1.0 with "402 Bad
Request"; and a key that is not base64 raises ``binascii.Error``, which it
does not catch. So :func:`problem` checks what RFC 6455 4.2.1 asks of a
client's handshake, as a pure function of the WSGI environ, and
:func:`checked_upgrade` answers a bad one through pywsgi, in bytes. A handshake that
passes is one that gevent-websocket accepts, so its refusals are never reached.

The answers: 400 for a malformed handshake (a field missing, empty, or not of
its grammar), with a one-line reason; 426 Upgrade Required for a well-formed
``Sec-WebSocket-Version`` that this server does not speak, as 4.2.2 suggests
("such as 426 Upgrade Required"), so that a client can tell "your request is
wrong" from "ask again with one of these versions". Every version answer names
the versions spoken in ``Sec-WebSocket-Version`` (4.4). The connection is
closed after a refusal: pywsgi gives an upgrade request's body to the app
unframed, so nothing after it can be read as a next request.

A request with no sign of a handshake (no ``Upgrade``, no ``Sec-WebSocket-*``,
no ``Connection: upgrade``) is not judged here: the app answers it (426).
Nothing here knows the router, the app's other routes or a connection's life.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

from geventwebsocket.handler import WebSocketHandler

from comet.inputs import BadRequest

log = logging.getLogger(__name__)

#: the app's WebSocket route; other paths are none of this module's business
WEBSOCKET_PREFIX = "/ws/"

#: what gevent-websocket speaks (13 is RFC 6455; 8 and 7 are its drafts, same frames)
SUPPORTED_VERSIONS = tuple(WebSocketHandler.SUPPORTED_VERSIONS)

#: RFC 6455 4.1: version = DIGIT | (NZDIGIT DIGIT) | ... , a number from 0 to 255
VERSION = re.compile(r"[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5]")

#: base64 of a 16-byte nonce: 22 characters of the alphabet and "==" (24 in all)
KEY = re.compile(r"[A-Za-z0-9+/]{22}==")

#: how much of a client's value a reason repeats
SHOWN = 40


def problem(environ: Mapping[str, str]) -> BadRequest | None:
    """The refusal a WebSocket handshake earns, or None if it passes or is not one.

    Checked in the RFC's order with the version last, so that a 426 means
    everything else was right.
    """
    if not _is_handshake(environ):
        return None
    method = environ.get("REQUEST_METHOD", "")
    if method != "GET":
        return _bad(f"a WebSocket handshake must be a GET, not {_shown(method)}")
    protocol = environ.get("SERVER_PROTOCOL", "")
    if protocol != "HTTP/1.1":
        return _bad(f"a WebSocket handshake needs HTTP/1.1, not {_shown(protocol)}")
    if not environ.get("HTTP_HOST"):
        return _bad("a WebSocket handshake needs a Host header")
    upgrade = environ.get("HTTP_UPGRADE")
    if upgrade is None or upgrade.lower() != "websocket":
        # exactly one token, as gevent-websocket and the app's pre-start hook compare it
        return _bad(_field("Upgrade", upgrade, "is not websocket"))
    connection = environ.get("HTTP_CONNECTION")
    if connection is None or "upgrade" not in _tokens(connection):
        return _bad(_field("Connection", connection, "does not name Upgrade"))
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    if key is None or not KEY.fullmatch(key.strip()):  # gevent-websocket strips it too
        return _bad(_field("Sec-WebSocket-Key", key,
                           "is not 16 bytes in base64 (24 characters)"))
    return _version_problem(environ.get("HTTP_SEC_WEBSOCKET_VERSION"))


def checked_upgrade(handler: WebSocketHandler,
                    upgrade_websocket: Callable[[], list | None]) -> list | None:
    """``CometHandler.upgrade_websocket``: refuse a bad handshake, else gevent-websocket's.

    ``upgrade_websocket`` is gevent-websocket's own method, called only for a
    handshake to the WebSocket route that passed (or a request there that is not
    one, which it leaves alone); elsewhere gevent-websocket is not asked at all,
    as its own refusals are 500s.
    A refusal goes out as a WSGI answer that gevent-websocket hands to pywsgi:
    its status set, no ``handler.websocket``, a body of bytes.
    """
    environ = handler.environ
    path = environ.get("PATH_INFO", "")
    if not path.startswith(WEBSOCKET_PREFIX):
        return None  # never upgraded here: the app answers it as plain HTTP
    refusal = problem(environ)
    if refusal is None:
        return upgrade_websocket()
    log.info("%s %s %s: %s (client %s)", refusal.status[:3], environ.get("REQUEST_METHOD"),
             path[:80], refusal.reason, environ.get("REMOTE_ADDR"))
    body = (refusal.reason + "\n").encode()
    handler.close_connection = True
    handler.start_response(refusal.status, [("Content-Type", "text/plain; charset=utf-8"),
                                            ("Content-Length", str(len(body))),
                                            *refusal.headers])
    return [body]


def _is_handshake(environ: Mapping[str, str]) -> bool:
    fields = ("HTTP_UPGRADE", "HTTP_SEC_WEBSOCKET_KEY", "HTTP_SEC_WEBSOCKET_VERSION")
    return (any(name in environ for name in fields)
            or "upgrade" in _tokens(environ.get("HTTP_CONNECTION", "")))


def _version_problem(version: str | None) -> BadRequest | None:
    if version in SUPPORTED_VERSIONS:
        return None
    spoken = ", ".join(SUPPORTED_VERSIONS)
    if version is not None and VERSION.fullmatch(version):
        return BadRequest("426 Upgrade Required",
                          f"WebSocket version {version} is not supported: "
                          f"this server speaks {spoken}",
                          (("Sec-WebSocket-Version", spoken), ("Upgrade", "websocket"),
                           ("Connection", "Upgrade, close")))
    return _bad(_field("Sec-WebSocket-Version", version,
                       f"is not a version: this server speaks {spoken}"),
                ("Sec-WebSocket-Version", spoken))


def _tokens(value: str) -> list[str]:
    return [token.strip().lower() for token in value.split(",")]


def _field(name: str, value: str | None, complaint: str) -> str:
    return f"{name} is missing" if value is None else f"{name} {_shown(value)} {complaint}"


def _shown(value: str) -> str:
    return repr(value) if len(value) <= SHOWN else repr(value[:SHOWN]) + "..."


def _bad(reason: str, *headers: tuple[str, str]) -> BadRequest:
    return BadRequest("400 Bad Request", reason, (*headers, ("Connection", "close")))

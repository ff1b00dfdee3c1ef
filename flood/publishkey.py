"""The publisher key flood's publishers send, for a server that needs one.

Never a flag's value (``ps`` shows a command line): the key comes from
``--publish-key-file PATH`` (its first key: one a line, blank lines and ``#``
comments skipped, as in the server's own key file; read here, not with
:func:`comet.publishers.keys_in_file`, because the flood imports nothing of
comet's server beyond hostlimits and capacity) or the environment variable
:data:`ENV`. Neither given: no key, as before (a comet server with no key
configured lets loopback publish without one). The key is sent as
``Authorization: Bearer <key>`` and never printed.
"""

from __future__ import annotations

import os

#: the environment variable that carries the key to flood.msggen and flood.bench
ENV = "COMET_PUBLISH_KEY_FOR_CLIENT"


def client_key(path: str | None = None, environ: dict | None = None) -> str | None:
    """The key to publish with, or None; a file that gives none is a ValueError."""
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--publish-key-file: cannot read {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        for line in lines:
            key = line.strip()
            if key and not key.startswith("#"):
                return key
        raise ValueError(f"--publish-key-file {path}: no key in it")
    environ = os.environ if environ is None else environ
    return environ.get(ENV, "").strip() or None


def header_fields(key: str | None) -> bytes:
    """Raw header lines for :class:`flood.publisher.Publisher` (empty without a key)."""
    return f"Authorization: Bearer {key}\r\n".encode("latin-1") if key else b""


def headers(key: str | None) -> dict[str, str]:
    """Headers for ``requests`` (empty without a key)."""
    return {"Authorization": f"Bearer {key}"} if key else {}

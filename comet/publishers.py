"""Who may publish: publisher keys, where they come from, how they rotate.

With no key configured, publishing (``POST /send/<id>``, ``POST /send``,
``POST /broadcast``, ``GET /stats/memory``) is for loopback clients only, as
before. With keys (``COMET_PUBLISH_KEYS``, comma-separated; the older
``COMET_PUBLISH_KEY``, one more; ``--publish-key-file``, one a line), every
publisher needs one, loopback included: ``Authorization: Bearer <key>`` or
``X-API-Key: <key>`` (:func:`presented_key`). :meth:`PublisherKeys.identify`
answers who is publishing (a key's fingerprint, or :data:`LOOPBACK`) or raises
:class:`PublishRefused`: 401 for no key where one is needed, 403 for a wrong
one or a non-loopback client of a server without keys.

The comparison is constant-time over every key: the SHA-256 of what was
presented against the SHA-256 of each configured key with
:func:`hmac.compare_digest`, with no early exit (hashing first also hides a
key's length). Keys are never in a log line, a reason or ``/stats``: a key is
named by its position in its source or by :func:`fingerprint`, the first 8 hex
digits of its SHA-256.

Rotation without a restart: the file is stat'ed again at most once a second,
when a publish arrives (:data:`CHECK_EVERY`), and re-read when its inode,
size, mtime or ctime changed; ``python -m comet.server`` without ``--workers``
also re-reads it on SIGHUP (:meth:`PublisherKeys.reload`). A file that has
become unreadable or empty keeps the last good keys, with one warning until it
is good again. At start the same faults are a :class:`PublisherSettingsError`:
one log line, exit status 2. Nothing here knows a route, the hub or a
connection.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable

from comet.inputs import is_loopback

log = logging.getLogger(__name__)

#: seconds between two looks at the key file's inode, size and times (when a publish comes)
CHECK_EVERY = 1.0

#: the identity of a publisher without a key: loopback, on a server with no key configured
LOOPBACK = "loopback"

#: keys shorter than this are accepted with a warning: /stats shows 32 bits of their hash
SHORT_KEY = 16

#: why a publisher is refused, as counted in /stats (``publishers_refused``)
MISSING = "missing key"
WRONG = "wrong key"
NOT_LOOPBACK = "not loopback"
OVER_RATE = "over rate"


class PublisherSettingsError(ValueError):
    """The publisher key settings cannot be used: said once at start, the server does not run."""


class PublishRefused(Exception):
    """A publisher refused: ``reason`` (fixed, key-free, counted), ``status``, ``headers``."""

    def __init__(self, reason: str, status: str, text: str, headers: tuple = ()) -> None:
        super().__init__(reason)
        self.reason, self.status, self.text, self.headers = reason, status, text, headers


def fingerprint(key: str) -> str:
    """A key's name where one is needed (counters, /stats, logs): 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def presented_key(environ: dict) -> str | None:
    """The key a request brings: ``Authorization: Bearer``, else ``X-API-Key``; None: none."""
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return environ.get("HTTP_X_API_KEY", "").strip() or None


def problem_with(key: str) -> str | None:
    """Why ``key`` cannot be a key (never quoting it), or None."""
    if not key.isascii() or not key.isprintable() or " " in key:
        return "not printable ASCII without blanks"
    return None


def keys_in_file(text: str, where: str) -> tuple[str, ...]:
    """The keys of a key file: one a line, blanks stripped, blank lines and ``#`` comments
    skipped. A bad line is named by its number, never quoted."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        problem = problem_with(key)
        if problem:
            raise PublisherSettingsError(f"--publish-key-file {where}: line {number}: {problem}")
        keys.append(key)
    if not keys:
        raise PublisherSettingsError(f"--publish-key-file {where}: no key in it")
    return tuple(keys)


class KeyFile:
    """``--publish-key-file``: its keys, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: (inode, size, mtime, ctime) when last read; a change means read it again
        self._signature: tuple | None = None
        #: whether the last attempt failed and was warned about (once until it succeeds)
        self.failing = False
        self.keys = self._read(self._stat())

    def _stat(self) -> tuple:
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise PublisherSettingsError(f"--publish-key-file: cannot read {self.path}: "
                                         f"{exc.strerror or exc}") from None
        return found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns

    def _read(self, signature: tuple) -> tuple[str, ...]:
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PublisherSettingsError(f"--publish-key-file: cannot read {self.path}: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
        keys = keys_in_file(text, self.path)
        self._signature = signature
        return keys

    def refresh(self, force: bool = False) -> bool:
        """Read the file again if it changed (or ``force``); whether the keys changed.

        A file that cannot be used keeps the last good keys, with one warning.
        """
        try:
            signature = self._stat()
            if signature == self._signature and not force:
                return False
            keys = self._read(signature)
        except PublisherSettingsError as exc:
            if not self.failing:
                log.warning("%s; keeping the last good publisher keys", exc)
                self.failing = True
            return False
        self.failing = False
        changed, self.keys = keys != self.keys, keys
        return changed


class PublisherKeys:
    """The configured publisher keys, from the environment and the key file, kept current."""

    def __init__(self, env_keys: Iterable[str] = (), file: KeyFile | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._env_keys = tuple(env_keys)
        self.file = file
        self._clock = clock
        self._checked_at = clock()
        #: bumped at each change of the key set (the rate limiter drops buckets of old keys)
        self.generation = 0
        self._use(self._all_keys())

    def _all_keys(self) -> tuple[str, ...]:
        return self._env_keys + (self.file.keys if self.file else ())

    def _use(self, keys: tuple[str, ...]) -> None:
        by_digest = {hashlib.sha256(k.encode()).digest(): fingerprint(k) for k in keys}
        #: (sha256 of a key, its fingerprint): what a presented key is compared with
        self._digests = tuple(by_digest.items())
        #: who may publish now: every key's fingerprint, or loopback alone
        self.identities = frozenset(by_digest.values()) or frozenset({LOOPBACK})
        self.generation += 1

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def fingerprints(self) -> list[str]:
        return sorted(fp for _, fp in self._digests)

    def describe(self) -> str:
        """What the server logs at start and on a change: counts and sources, never a key."""
        sources = []
        if self._env_keys:
            sources.append(f"{len(self._env_keys)} from the environment")
        if self.file:
            sources.append(f"{len(self.file.keys)} from {self.file.path}")
        return f"{len(self._digests)} publisher keys ({', '.join(sources)})"

    def short_keys(self) -> list[str]:
        """Fingerprints of keys shorter than :data:`SHORT_KEY` (warned about at start)."""
        return [fingerprint(k) for k in self._all_keys() if len(k) < SHORT_KEY]

    def reload(self, why: str = "SIGHUP") -> None:
        """Read the key file now (SIGHUP), whatever its times say."""
        if self.file is None:
            log.info("%s: no --publish-key-file to re-read", why)
            return
        self._refreshed(self.file.refresh(force=True), why)

    def _check_file(self) -> None:
        now = self._clock()
        if self.file is None or now - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = now
        self._refreshed(self.file.refresh(), f"{self.file.path} changed")

    def _refreshed(self, changed: bool, why: str) -> None:
        if changed:
            self._use(self._all_keys())
            log.info("%s: publisher keys re-read, now %s", why, self.describe())

    def identify(self, environ: dict) -> str:
        """Who publishes: a key's fingerprint or :data:`LOOPBACK`, else :class:`PublishRefused`."""
        self._check_file()
        if not self._digests:
            if is_loopback(environ.get("REMOTE_ADDR", "")):
                return LOOPBACK
            raise PublishRefused(NOT_LOOPBACK, "403 Forbidden",
                                 "publishing is for loopback clients (no publisher key is set)")
        key = presented_key(environ)
        if key is None:
            raise PublishRefused(MISSING, "401 Unauthorized",
                                 "publishing needs a key: Authorization: Bearer <key> "
                                 "or X-API-Key: <key>",
                                 (("WWW-Authenticate", 'Bearer realm="comet"'),))
        return self._match(key)

    def _match(self, key: str) -> str:
        """Compare with every key, constant-time, all of them whatever matched."""
        given = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for digest, name in self._digests:
            if hmac.compare_digest(digest, given):
                found = name
        if found is None:
            raise PublishRefused(WRONG, "403 Forbidden", "wrong publish key")
        return found


@functools.cache
def keys_for(settings) -> PublisherKeys:
    """The publisher keys the settings give; :class:`PublisherSettingsError` if unusable.

    Cached per settings object, like the token verifier: the check at start
    and the app (a forked worker's included) share the keys read then.
    """
    env_keys = tuple(settings.publish_keys or ())
    if settings.publish_key:
        problem = problem_with(settings.publish_key.strip())
        if problem:
            raise PublisherSettingsError(f"COMET_PUBLISH_KEY: {problem}")
        env_keys += (settings.publish_key.strip(),)
    file = KeyFile(settings.publish_key_file) if settings.publish_key_file else None
    return PublisherKeys(env_keys, file)

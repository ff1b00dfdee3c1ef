"""Settings: every server knob declared once.

Each :class:`Setting` names a flag, a ``COMET_*`` environment variable, a
parser that validates, a default and a help line. The command line
(:func:`build_parser`), the environment and the options table in
``docs/usage.rst`` (:func:`options_table`) all come from :data:`SETTINGS`, so
they cannot drift apart (the gunicorn way). Precedence: flag, then
environment, then default.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comet.broker import redacted
from comet.logformat import FORMATS, formatter
from comet.peers import LOOPBACK, Peers

ENV_PREFIX = "COMET_"


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive whole number, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, not {text!r}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be 0 or more seconds, not {text!r}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535 (0: any free port), not {text!r}")
    return value


def log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be one of debug, info, warning, error, not {text!r}")
    return level


def log_format(text: str) -> str:
    name = text.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"must be {' or '.join(FORMATS)}, not {text!r}")
    return name


def on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"must be on or off, not {text!r}")


def text_or_none(text: str) -> str | None:
    return text or None


def key_list(text: str) -> tuple[str, ...] | None:
    """Comma-separated keys (blanks around each stripped), or None for a blank value.

    The error names a key by its position only: the value is a secret.
    """
    if not text.strip():
        return None
    keys = tuple(key.strip() for key in text.split(","))
    for position, key in enumerate(keys, 1):
        if not key:
            raise ValueError(f"key {position} of the list is empty")
        if not key.isascii() or not key.isprintable() or " " in key:
            raise ValueError(f"key {position} of the list is not printable ASCII "
                             "without blanks")
    return keys


def redis_url(text: str) -> str | None:
    """A Redis URL redis-py understands, or None (empty: the in-process broker)."""
    if not text:
        return None
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, not "
                         f"{redacted(text)!r}")
    return text


@dataclass(frozen=True)
class Setting:
    """One knob: its attribute name, its parser, its default and why it exists."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    #: an on/off switch: the bare flag means on
    switch: bool = False
    #: a secret: set only by its ``COMET_*`` variable (a flag's value shows in ``ps``),
    #: and never shown by ``Settings.__repr__``
    secret: bool = False

    @property
    def flag(self) -> str | None:
        """The command-line flag; None for a secret, which the environment alone carries."""
        return None if self.secret else "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "0.0.0.0", "address to listen on"),
    Setting("port", port_number, 8000, "port to listen on (0: any free port, logged at start)"),
    Setting("workers", positive_int, 1,
            "processes serving the port: above 1, a master imports everything, forks this "
            "many workers that each accept on the port (SO_REUSEPORT) and restarts any that "
            "dies; needs a broker that spans processes"),
    Setting("interval", positive_float, 10.0, "seconds between tick chunks on /test/"),
    Setting("max_connections", positive_int, 19000,
            "streaming connections held at most; beyond it new ones get 503"),
    Setting("max_per_ip", non_negative_int, 0,
            "connections (streams, SSE, WebSockets, waiting long-polls) one client may hold "
            "at once, an IPv4 address or an IPv6 /64; beyond it 429 with Retry-After (0: no "
            "limit, for clients behind a proxy or a NAT that share one address)"),
    Setting("max_new_per_second", non_negative_int, 0,
            "subscriber requests this process admits per second (a token bucket, bursts "
            "up to one second's worth); beyond it 503 with Retry-After: 1 (0: no limit); "
            "per process: each of --workers N has its own"),
    Setting("max_ids", positive_int, 64,
            "ids one connection may log in as (the path id and each ?id=); more: 400"),
    Setting("max_handshakes", positive_int, 100,
            "requests one process handles at once with --hibernate on (new connections "
            "wait in the listen backlog beyond it): a crowd is taken at the pace the "
            "process can log it in, never so many at once that logins time out; a "
            "connection that has sent nothing yet, or a keep-alive one waiting for its "
            "next POST or DELETE, does not count"),
    Setting("queue_limit", positive_int, 256,
            "messages queued per connection at most; a reader that falls further "
            "behind is dropped as a slow consumer"),
    Setting("max_message", positive_int, 64 * 1024, "bytes in a published message at most (413)"),
    Setting("max_batch", positive_int, 1024 * 1024,
            "bytes in one batch publish (POST /send, newline-delimited JSON) at most (413)"),
    Setting("max_following", positive_int, 1000,
            "ids one user may follow (POST /subscribe); more: 409. Its list is read in "
            "pages and a follow checks it whole, so it stays small"),
    Setting("max_followers", positive_int, 100_000,
            "subscribers one id may have; more: 409. A notify reads them all and "
            "publishes to each, so this bounds what one POST /notify costs"),
    Setting("max_follow_ids", positive_int, 100,
            "?to= ids in one POST or DELETE /subscribe at most; more: 400"),
    Setting("subscriptions_page", positive_int, 100,
            "ids one page of GET /subscriptions/<id> lists at most"),
    Setting("publish_keys", key_list, None,
            "publisher keys, comma-separated: with any key configured every publisher "
            "(loopback too) needs one, as Authorization: Bearer or X-API-Key; "
            "environment only, never a flag (see --publish-key-file)", secret=True),
    Setting("publish_key", text_or_none, None,
            "one more publisher key (kept from before COMET_PUBLISH_KEYS); environment only",
            secret=True),
    Setting("publish_key_file", text_or_none, None,
            "file of publisher keys, one a line (blank lines and # comments ignored); "
            "re-read when it changes (checked at most once a second, on a publish) and "
            "on SIGHUP without --workers"),
    Setting("publish_rate_per_key", non_negative_float, 0.0,
            "messages per second each publisher key may publish (a batch counts its "
            "messages; the keyless loopback publisher counts as one key); over it: 429 "
            "with Retry-After (0: unlimited)"),
    Setting("token_secret", text_or_none, None,
            "HS256 secret (at least 32 bytes) that subscriber tokens are signed with; "
            "environment only, never a flag (see --token-secret-file)", secret=True),
    Setting("token_secret_file", text_or_none, None,
            "file holding the HS256 secret of subscriber tokens (surrounding blanks "
            "stripped): with it, or COMET_TOKEN_SECRET, --token-public-key or --token-jwks, "
            "subscribing needs a token"),
    Setting("token_public_key", text_or_none, None,
            "PEM public key file that subscriber tokens are verified with: RSA means "
            "RS256, EC P-256/P-384/P-521 ES256/ES384/ES512, and nothing else is accepted"),
    Setting("token_jwks", text_or_none, None,
            "JWKS JSON file of public keys for subscriber tokens: the token's kid picks "
            "the key, and the key's alg (or type) the one algorithm accepted"),
    Setting("token_audience", text_or_none, None,
            "the aud a subscriber token must name (unset: a token with an aud is refused)"),
    Setting("token_issuer", text_or_none, None, "the iss a subscriber token must name"),
    Setting("token_leeway", non_negative_float, 30.0,
            "seconds of clock skew allowed on a token's exp and nbf; a held connection "
            "ends this long after its token's exp"),
    Setting("read_timeout", positive_float, 30.0,
            "seconds a client may take to send a request (line, headers, body); "
            "idle keep-alive connections are closed after it"),
    Setting("write_timeout", positive_float, 60.0,
            "seconds one write to a client may block before the client is dropped"),
    Setting("drain_seconds", non_negative_float, 10.0,
            "seconds over which SIGTERM (and a rolling restart) ends the connections, "
            "a slice at a time, so that their clients do not all come back at once; "
            "a server with few connections ends them at once (at least 1,000 a second)"),
    Setting("shutdown_timeout", positive_float, 5.0,
            "seconds SIGTERM waits, after the drain, for streams to end before closing them hard"),
    Setting("hibernate", on_off, True,
            "on: an idle connection (stream, SSE, WebSocket, waiting long-poll) keeps no "
            "greenlet, only a small record whose socket the router writes to; off: one "
            "greenlet per connection sleeps in its response iterator, as in the seed"),
    Setting("fast_path", on_off, True,
            "on: POST and DELETE requests (publishing, following) that arrive whole are "
            "parsed with httptools and answered in one write; off: pywsgi parses every "
            "request (gunicorn's workers always do)"),
    Setting("heartbeat", positive_float, 15.0,
            "seconds between SSE comment heartbeats and WebSocket pings"),
    Setting("sse_retry", positive_int, 2000,
            "milliseconds an EventSource waits before reconnecting (the retry: hint)"),
    Setting("poll_timeout", positive_float, 30.0,
            "seconds a long-poll waits for a message before answering empty"),
    Setting("history", non_negative_int, 100,
            "messages kept per id for clients that resume (0: no history)"),
    Setting("history_ttl", positive_float, 300.0, "seconds a message is kept for resuming"),
    Setting("history_memory", positive_int, 64 * 1024 * 1024,
            "bytes of message data the history keeps at most, over all ids"),
    Setting("redis", redis_url, None,
            "Redis URL (redis://, rediss://, unix://; password and db from it, never "
            "logged): the broker that spans processes and machines (default: in-process)"),
    Setting("redis_cluster", on_off, False,
            "the --redis URL is a node of a Redis Cluster (7+): sharded pub/sub, each id's "
            "history on its own shard, positions per stream", switch=True),
    Setting("redis_wait", non_negative_float, 0.0,
            "seconds to keep trying at start while Redis cannot be reached (0: exit at once)"),
    Setting("allow_origin", text_or_none, None,
            "CORS: origins allowed to use /events, /poll and /ws from a page elsewhere "
            "('*' or a comma-separated list)"),
    Setting("tracemalloc", non_negative_int, 0,
            "frames of traceback tracemalloc keeps (0: off); when on, GET /stats/memory "
            "lists the source lines holding the most memory (costs memory and CPU itself)"),
    Setting("metrics_from", Peers.parse, Peers.parse(LOOPBACK),
            "addresses and networks (comma-separated, CIDR) whose clients may read /metrics "
            "and /stats; others get 403, counted and logged once per burst "
            "(0.0.0.0/0,::/0: anyone)"),
    Setting("log_level", log_level, "INFO", "debug, info, warning or error"),
    Setting("log_format", log_format, "plain",
            "plain: one line of text a record; json: one JSON object a line (time, level, "
            "logger, message, and where the record has them: connection, transport, ids, "
            "end, peer, status), for log shippers; master, workers and access log alike"),
)

BY_NAME = {s.name: s for s in SETTINGS}

#: settings whose values never appear in a log line or a repr
HIDDEN = frozenset(s.name for s in SETTINGS if s.secret)


class Settings:
    """Plain attribute bag of parsed settings; one attribute per :data:`SETTINGS` entry."""

    def __init__(self, **values: Any) -> None:
        for setting in SETTINGS:
            setattr(self, setting.name, values.pop(setting.name, setting.default))
        if values:
            raise TypeError(f"unknown settings: {', '.join(sorted(values))}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{s.name}={_redacted(s.name, getattr(self, s.name))!r}"
                          for s in SETTINGS if s.name not in HIDDEN)
        return f"Settings({shown})"


def _redacted(name: str, value: Any) -> Any:
    """A setting's value fit for a log line: the password of a Redis URL hidden."""
    if name == "redis" and value:
        return redacted(value)
    return value


def _argparse_type(setting: Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = setting.name
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, except that an unknown argument's value is never repeated in the error:
    a mistyped ``--token-secret...`` would otherwise print the secret."""

    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            flags = " ".join(a.split("=")[0] for a in extra if a.startswith("-"))
            self.error(f"unrecognized arguments: {flags or 'values without a flag'} "
                       "(values not repeated)")
        return namespace


def _refused_on_command_line(setting: Setting) -> Callable[[str], Any]:
    """A secret given as a flag: refused with a message that does not repeat it
    (argparse would echo an unknown flag's value)."""
    def refuse(text: str) -> Any:
        raise argparse.ArgumentTypeError(f"never given on the command line (where ps shows "
                                         f"it): set {setting.env} instead")
    refuse.__name__ = setting.name
    return refuse


def build_parser(prog: str = "python -m comet.server") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, description="comet: a gevent comet server", allow_abbrev=False,
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<NAME>, "
               f"for example {ENV_PREFIX}MAX_CONNECTIONS=10000.")
    for setting in SETTINGS:
        if setting.flag is None:
            parser.add_argument("--" + setting.name.replace("_", "-"), help=argparse.SUPPRESS,
                                type=_refused_on_command_line(setting))
            continue
        bare = {"nargs": "?", "const": True} if setting.switch else {}
        parser.add_argument(setting.flag, dest=setting.name, type=_argparse_type(setting),
                            default=None, **bare,
                            help=f"{setting.help} (default: {_shown(setting.default)})")
    return parser


def from_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Parse the ``COMET_*`` variables that are set; a bad value is a clear error."""
    environ = os.environ if environ is None else environ
    values = {}
    for setting in SETTINGS:
        if setting.env in environ:
            try:
                values[setting.name] = setting.parse(environ[setting.env])
            except ValueError as exc:
                raise SystemExit(f"{setting.env}: {exc}") from None
    return values


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from flags over environment over defaults."""
    values = from_environment(environ)
    flags = vars(build_parser().parse_args(argv))
    values.update({name: value for name, value in flags.items() if value is not None})
    if values.get("redis_cluster") and not values.get("redis"):
        raise SystemExit("--redis-cluster needs --redis URL: a node of the cluster to start from")
    return Settings(**values)


def options_table() -> str:
    """The options table of docs/usage.rst, generated from :data:`SETTINGS`."""
    rows = [(s.flag or "(none)", s.env, _shown(s.default), s.help) for s in SETTINGS]
    widths = [max(len(r[i]) for r in rows + [("flag", "environment", "default", "meaning")])
              for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    head = "  ".join(h.ljust(w) for h, w in zip(("flag", "environment", "default", "meaning"),
                                               widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
    return "\n".join([rule, head.rstrip(), rule, *body, rule])


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def configure_logging(level: str, format: str = "plain") -> None:
    """The root logger at ``level``, writing to stderr in ``format`` (plain or json)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(format))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    if format == "json":  # a Python warning too is a record, not a stray line of text
        logging.captureWarnings(True)


TABLE_START, TABLE_END = ".. options-table-start\n", ".. options-table-end\n"


def rewrite_options_table(path: str) -> None:
    """Put the current table between the markers of the rst file at ``path``."""
    with open(path) as doc:
        text = doc.read()
    before, _, rest = text.partition(TABLE_START)
    _, found, after = rest.partition(TABLE_END)
    if not found:
        raise SystemExit(f"{path}: no {TABLE_START.strip()} ... {TABLE_END.strip()} markers")
    with open(path, "w") as doc:
        doc.write(f"{before}{TABLE_START}\n{options_table()}\n\n{TABLE_END}{after}")


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1:
        rewrite_options_table(sys.argv[1])
    else:
        print(options_table())

"""How a log record becomes a line: ``--log-format plain`` or ``json``.

Plain is for people reading a terminal; json is for log shippers (Vector,
Fluent Bit, Loki's promtail), which otherwise guess at fields with regular
expressions that break the day a message's wording changes. A json line is
one object: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
``pid``, ``message``, and the fields of :data:`FIELDS` that the code logging
it passed (``extra={...}``): which connection, its transport, how many ids,
why it ended, the peer. A traceback rides along in ``exception``, escaped
into the one line, so a shipper never takes its lines for records.

Nothing is added here that the message does not already carry, with one
exception, the fields; those are chosen by the callers and hold no secret
(a token, a key, a password): the messages are redacted where they are
made (``tokens.redacted``, the broker's ``redacted``).
"""

from __future__ import annotations

import datetime
import json
import logging

#: the formats ``--log-format`` takes
FORMATS = ("plain", "json")

#: the plain format: time, pid, level, logger, message
PLAIN = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

#: structured fields a record may carry (``extra=``), in the order a json line shows them:
#: ``event`` (what happened, a short fixed name), ``connection`` (its repr), ``transport``,
#: ``ids`` (how many ids it is logged in as), ``end`` (why it ended), ``peer`` (the
#: client's address), ``status`` (the HTTP status answered)
FIELDS = ("event", "connection", "transport", "ids", "end", "peer", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the record's time, level, logger, message and fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: every control character and line separator escaped, one line always
        return json.dumps(entry, default=str)


def formatter(name: str) -> logging.Formatter:
    """The formatter of ``--log-format name``."""
    return JsonFormatter() if name == "json" else logging.Formatter(PLAIN)

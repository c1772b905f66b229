"""Structured JSON logs that cannot carry personal information.

Tiaki logs through structlog with :func:`scrub_personal_information` in the processor chain.
It is an allow-list, not a deny-list: a log entry keeps only keys Tiaki knows to be safe
(ids, agency names, topics, counts, reason codes, durations), and even their values are
checked against patterns of identifiers, e-mail addresses and phone numbers. Anything else is
replaced by ``"[scrubbed]"``, so a developer who logs a record by mistake leaks nothing.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: Keys whose values are safe to log: they name the platform's own things, never a person.
SAFE_KEYS = frozenset(
    {
        "event",  # the log message itself: a fixed string in Tiaki's code
        "level",
        "timestamp",
        "logger",
        "worker",
        "agency",
        "source",
        "recipient",
        "topic",
        "partition",
        "offset",
        "event_id",
        "event_type",
        "reason",
        "outcome",
        "count",
        "records",
        "outputs",
        "quarantined",
        "policy_hash",
        "old_policy_hash",
        "new_policy_hash",
        "duration_ms",
        "attempt",
        "error_type",
        "status",
        "group",
        "bootstrap",
        "signal",
        "chain",  # an audit chain: a worker's transactional id
        "size",
        "key_id",  # only in the format Tiaki makes key ids in (below)
        "key_state",
        "task",  # a broker background task: a fixed word in Tiaki's code
    }
)

SCRUBBED = "[scrubbed]"

#: Safe keys whose values Tiaki itself makes in a fixed format, so no pattern applies.
_NO_PATTERN = frozenset({"event_id", "timestamp"})

#: Values that look personal even under a safe key: NHI numbers, e-mail, phone, long digit runs.
_PERSONAL = re.compile(
    r"\b[A-HJ-NP-Z]{3}\d{2}[0-9A-Z]{2}\b"  # NHI (old and new formats)
    r"|[\w.+-]+@[\w-]+\.[\w.]+"  # e-mail
    r"|\+?\d[\d ()-]{7,}\d"  # phone numbers and other long digit runs
)


def scrub_personal_information(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: keep safe keys with safe-looking values; scrub everything else."""
    for key in list(event_dict):
        if not _safe(key, event_dict[key]):
            event_dict[key] = SCRUBBED
    return event_dict


#: Safe keys whose values must match Tiaki's own format to be kept: a key id comes from a
#: public key document, which an agency writes (``<owner>.<enc|sig>.<UTC time>.<8 hex>``).
_FORMATS = {"key_id": re.compile(r"[a-z0-9][a-z0-9-]*\.(enc|sig)\.\d{8}T\d{6}Z\.[0-9a-f]{8}")}


def _safe(key: str, value: Any) -> bool:
    if key not in SAFE_KEYS or not isinstance(value, str | int | float | bool | type(None)):
        return False
    if key in _FORMATS:
        return isinstance(value, str) and _FORMATS[key].fullmatch(value) is not None
    # Event ids (UUIDs) and our own timestamps have digit runs that would look like phones.
    return key in _NO_PATTERN or not (isinstance(value, str) and _PERSONAL.search(value))


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """JSON logs, one object per line, scrubbed, to ``stream`` (default stderr)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub_personal_information,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )

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
        "layout",  # the audit index's table layout: a number in Tiaki's code
        "layout_was",
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


def looks_personal(text: str) -> bool:
    """Whether ``text`` holds something the scrubber would take for personal information (an
    NHI number, an e-mail address, a phone number or another long run of digits)."""
    return _PERSONAL.search(text) is not None


#: What a person may type by mistake into reasons kept for good (a reviewer's or operator's
#: justification, which the audit log holds in clear), beyond :data:`_PERSONAL`. Stricter than
#: the log scrubber can be (it would scrub offsets and counts): an NHI in any case, any run of
#: five or more digits (a Police NIA number, a client number), a date (a date of birth), and a
#: street address ("12 Karaka St"). A name cannot be told from other words; the message says so.
_TYPED_PERSONAL = re.compile(
    r"\b[a-hj-np-z]{3}\d{2}[0-9a-z]{2}\b"
    r"|\d{5,}"
    r"|\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b"
    r"|\b\d+[a-z]?\s+(\w+\s+){1,3}(street|st|road|rd|avenue|ave|drive|dr|place|pl|lane|ln|terrace|tce"
    r"|crescent|cres|way|grove|close|parade)\b",
    re.IGNORECASE,
)


def typed_text_looks_personal(text: str) -> bool:
    """Whether reasons a person typed hold an identifier, a date or an address (see
    :data:`_TYPED_PERSONAL`), or anything :func:`looks_personal` finds."""
    return looks_personal(text) or _TYPED_PERSONAL.search(text) is not None


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


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler :func:`configure_logging` installs (and replaces)."""


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """JSON logs, one object per line, scrubbed, to ``stream`` (default stderr).

    Libraries log through the standard library (aiokafka's retries and connection errors):
    the root logger gets a handler that runs their records through the same processors,
    scrubber included, so every line on stderr is a scrubbed JSON object. Calling this
    again replaces that handler; handlers others put on the root logger are left alone.
    """
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, scrub_personal_information, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _StdlibHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # A record's message is its "event"; its extra attributes are not carried over
            # (the scrubber would drop them anyway), nor its exception's traceback text,
            # which may quote a record: only the exception's type, a safe key, is kept.
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _error_type],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                scrub_personal_information,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _error_type(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A standard-library record's exception, as ``error_type`` (its class name) only."""
    event_dict.pop("exc_info", None)  # the traceback, rendered or not, stays out
    record = event_dict.get("_record")
    exc_info = getattr(record, "exc_info", None)
    if exc_info and exc_info[0] is not None:
        event_dict["error_type"] = exc_info[0].__name__
    return event_dict

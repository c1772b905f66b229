"""Where received events go: a folder, an HTTP webhook, or standard output.

Each sink gets every event the policies let the agency see, as one JSON document::

    {"event_id", "event_type", "source_agency", "route", "legal_basis", "purpose",
     "obligations", "rule_ids", "field_actions", "shared_at", "decided_at",
     "released_late", "idempotency_key", "body"}

``decided_at`` is when the broker decided to share the event, ``shared_at`` when it was sent;
they differ only for an event held for review that a person released later
(``released_late``), which can arrive after later events of its case: order by
``decided_at``.

Sinks must be idempotent by ``idempotency_key`` (``<source agency>/<event id>``): an event
may be handed over again after a crash. A sink that fails raises, and the SDK retries the
event (then dead-letters it). These are *data* outputs, chosen by the agency; logs never
carry the body.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol, TextIO

from adapters._errors import AdapterError
from adapters._events import Received, file_stem
from adapters._private_files import write_private


class SinkFailed(AdapterError):
    """A sink could not take an event (the SDK will try again)."""

    #: Its messages name status codes and OS error names, never the event, so the SDK keeps
    #: them as the retry and dead-letter reason (other handler exceptions keep only a type).
    message_is_content_free = True


class Sink(Protocol):
    async def deliver(self, event: Received) -> None: ...


def document(event: Received) -> dict[str, Any]:
    """The JSON form every sink writes."""
    return {
        "event_id": event.event_id,
        "idempotency_key": event.idempotency_key,
        "event_type": event.event_type,
        "source_agency": event.source_agency,
        "route": event.route,
        "legal_basis": event.legal_basis,
        "purpose": event.purpose,
        "obligations": list(event.obligations),
        "rule_ids": list(event.rule_ids),
        "field_actions": dict(event.field_actions),
        "shared_at": event.shared_at.isoformat(),
        "decided_at": (event.decided_at or event.shared_at).isoformat(),
        "released_late": event.released_late,
        "body": event.body,
    }


class FolderSink:
    """``<path>/<source agency>_<event id>.json`` per event (``0600``), written atomically;
    rewriting the same event is harmless. The name is the idempotency key's file form, so two
    agencies' events that share an event id are two files, not one overwriting the other."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, event: Received) -> None:
        data = json.dumps(document(event), indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_private(self.path / f"{file_stem(event.idempotency_key)}.json", data)
        except OSError as exc:
            raise SinkFailed(f"cannot write to the folder sink: {exc.strerror}") from None


class StdoutSink:
    """One JSON line per event (for piping into another program, or watching a demo)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def deliver(self, event: Received) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(document(event), sort_keys=True) + "\n")
        stream.flush()


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would re-send a 301/302/303 as a ``GET`` without the body,
    and the page it lands on (a login page) answering 200 would count as delivered."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


class WebhookSink:
    """``POST`` the document as JSON to ``url`` with an ``Idempotency-Key`` header; only a 2xx
    answer to that ``POST`` is a delivery. Redirects are not followed: a 3xx, like any other
    status or no answer within ``timeout_s``, is a failure to retry."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    async def deliver(self, event: Received) -> None:
        await asyncio.to_thread(self._post, event)

    def _post(self, event: Received) -> None:
        request = urllib.request.Request(  # noqa: S310 - the URL comes from the agency's config, http(s) only
            self.url,
            data=json.dumps(document(event)).encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": event.idempotency_key},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                if not 200 <= response.status < 300:
                    raise SinkFailed(f"webhook answered {response.status}")
        except urllib.error.HTTPError as exc:
            raise SinkFailed(f"webhook answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SinkFailed(f"webhook unreachable: {type(exc).__name__}") from None

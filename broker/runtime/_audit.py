"""Audit and quarantine records, built as values (pure).

An audit record says who did what, to whom, when and why, and never carries a field value.
People are findable only through *subject references*: a keyed hash (HMAC-SHA256 under the
deployment's audit subject key) of each identifier's scheme and value, so compliance can ask
"who received information about this person?" by hashing the identifier it is given, while
the audit log itself reveals nobody.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.codec import Schema, record_finder
from broker.codec._finder import Finder
from broker.envelope import KeyInfo
from broker.policy import stated_grounds
from broker.runtime._intake import Rejected


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 already keyed with ``key``: every event hashes several identifiers under
    the one audit subject key, and copying a keyed HMAC is cheaper than keying a new one."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _keyed_hash(key: bytes, message: bytes) -> str:
    mac = _keyed(key).copy()
    mac.update(message)
    return mac.hexdigest()


#: The identifier schemes (``PersonIdentifier.scheme``'s symbols, schemas/types): a test holds
#: the two together, so a query can refuse a scheme no event can carry.
SCHEMES = (
    "nhi",
    "police_nia",
    "ot_client",
    "corrections_prn",
    "msd_client",
    "nsn",
    "agency_local",
    "synthetic",
    "unknown",
)
#: The scheme whose values mean something only with their issuer: two agencies' local ids
#: with the same value are two people, so the issuer is part of the reference.
LOCAL = "agency_local"


def subject_ref(key: bytes, scheme: str, value: str, issuer: str | None = None) -> str:
    """The keyed hash that stands for one identifier in the audit log.

    The scheme is compared as the schema spells it (lower case: ``NHI`` and ``nhi`` are one
    scheme), the value without surrounding blanks and in upper case; ``issuer`` counts for
    an ``agency_local`` identifier only (the agency's registry id, lower case)."""
    scheme = scheme.strip().lower()
    if scheme == LOCAL:
        scheme = f"{LOCAL}\x1f{(issuer or '').strip().lower()}"
    return _keyed_hash(key, f"{scheme}\x1f{value.strip().upper()}".encode())


def grounds_ref(key: bytes, kind: str, text: object) -> str | None:
    """The keyed hash that stands for a discloser's stated grounds (``kind`` ``justification``
    or ``accountable``: FVA-03's justification and accountable person or role), or None if
    none was stated. The text is free and may name people, so the audit log keeps only this:
    whoever holds the text (the discloser's own record) can show it is what was stated
    (FVA-07), and the log reveals nothing of it. Leading and trailing blanks do not count."""
    if not isinstance(text, str) or not text.strip():
        return None
    return _keyed_hash(key, f"{kind}\x1f{text.strip()}".encode())


def case_ref(key: bytes, case_id: str) -> str:
    """The keyed hash that stands for a case id in the audit log."""
    return _keyed_hash(key, b"case\x1f" + case_id.encode())


def _identifiers(node: Any, out: set[tuple[str, str, str | None]]) -> None:
    """Add every (scheme, value, issuer) of a PersonIdentifier anywhere in a decoded event.

    A plain recursion over the dicts and lists fastavro decodes to (not a generator, and
    exact type checks): it runs on every event, over every field.
    """
    kind = type(node)
    if kind is dict:
        _identifier(node, out)
        for child in node.values():
            kind = type(child)
            if kind is dict or kind is list:
                _identifiers(child, out)
    elif kind is list:
        for child in node:
            kind = type(child)
            if kind is dict or kind is list:
                _identifiers(child, out)
    elif isinstance(node, Mapping):  # any other mapping: walk it as a dict
        _identifiers(dict(node), out)


def _identifier(node: Mapping[str, Any], out: set[tuple[str, str, str | None]]) -> None:
    """Add ``node``'s (scheme, value, issuer) if it is a PersonIdentifier: it has an issuer,
    and its scheme and value are text (the issuer only of an ``agency_local`` one)."""
    scheme = node.get("scheme")
    if "issuer" in node and type(scheme) is str:
        value = node.get("value")
        if type(value) is str:
            issuer = node["issuer"] if scheme == LOCAL else None
            out.add((scheme, value, issuer if type(issuer) is str else None))


def subject_refs(
    key: bytes, event: Mapping[str, Any], identifiers: Sequence[Mapping[str, Any]] | None = None
) -> list[str]:
    """Sorted, distinct subject references of everyone an event identifies: found by walking
    the event, or in ``identifiers``, its records that have an ``issuer`` found from its
    schema (:func:`identifier_finder`)."""
    found: set[tuple[str, str, str | None]] = set()
    if identifiers is None:
        _identifiers(event if type(event) is dict else dict(event), found)
    else:
        for node in identifiers:
            _identifier(node, found)
    return sorted({subject_ref(key, *identifier) for identifier in found})


def identifier_finder(schema: Schema) -> Finder | None:
    """The finder (:func:`broker.codec.record_finder`) of the records with an ``issuer``
    (PersonIdentifier) in an event decoded with ``schema``; None if there is none (the
    event is walked)."""
    return record_finder(schema, _ISSUER)


_ISSUER = frozenset({"issuer"})


@dataclass(frozen=True)
class AuditContext:
    """What every audit record of one broker shares."""

    subject_key: bytes
    policy_hash: str | None
    actor: str = "broker"


def audit_base(
    ctx: AuditContext, action: str, now: datetime, new_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """An audit record with every field empty but who, what kind of act, and when."""
    return {
        "audit_id": new_id or uuid.uuid4(),
        "recorded_at": now,
        "action": action,
        "event_id": None,
        "event_type": None,
        "schema_fingerprint": None,
        "case_ref": None,
        "actor": ctx.actor,
        "source_agency": None,
        "recipient": None,
        "outcome": None,
        "route": None,
        "legal_basis": None,
        "purpose": None,
        "consent": None,
        "person_told": None,
        "rule_ids": [],
        "reason_codes": [],
        "obligations": [],
        "field_actions": {},
        "subject_refs": [],
        "policy_hash": ctx.policy_hash,
        "detail": None,
        "justification_ref": None,
        "accountable_ref": None,
        "decisions": [],
    }


def policy_change_audit(
    ctx: AuditContext,
    now: datetime,
    *,
    replaced: str | None,
    rejected: str | None = None,
    started: bool = False,
) -> dict[str, Any]:
    """The audit record of a worker taking a new policy set into force (``ctx`` names it),
    refusing one (``rejected``: why, as an error's type; ``ctx`` names the policy kept), or
    (``started``) running the one in force from its start on."""
    record = audit_base(ctx, "policy_change", now)
    if rejected is not None:
        return record | {"outcome": "reject", "reason_codes": ["policy_rejected", rejected]}
    if started:
        return record | {"outcome": "in_force", "reason_codes": ["worker_started"]}
    detail = None if replaced is None else f"replaces policy {replaced}"
    return record | {"outcome": "adopted", "reason_codes": ["policy_adopted"], "detail": detail}


def key_operation_audit(
    ctx: AuditContext,
    now: datetime,
    info: KeyInfo,
    *,
    refused: bool = False,
    started: bool = False,
) -> dict[str, Any]:
    """The audit record of a key change a worker took into force (a new key, a rotation's
    retiring key, a revocation, from ``tiaki keys``), or ``refused`` (a key document that
    would un-revoke a key or change what its id stands for), or (``started``) of a key's state
    as the worker found it at its start, so that a change made while no worker ran (a key
    revoked during maintenance) shows between two starts. Never the revocation's reason,
    which is free text."""
    state = info.state.value
    reason = "key_change_refused" if refused else f"key_{state}"
    return audit_base(ctx, "key_operation", now) | {
        "source_agency": info.owner,
        "outcome": "reject" if refused else state,
        "reason_codes": ["worker_started", reason] if started else [reason],
        "detail": f"key {info.key_id} ({info.purpose.value}, {info.algorithm.value}) of "
        f"{info.owner}: {state}",
    }


def quarantine_audit(
    ctx: AuditContext, rejected: Rejected, now: datetime, new_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """The audit record of a quarantined ingress record (nothing of it was trusted)."""
    record = audit_base(ctx, "quarantine", now, new_id or uuid.uuid4())
    record |= {
        "event_id": rejected.event_id,
        "event_type": rejected.event_type,
        "source_agency": rejected.source,
        "outcome": "quarantined",
        "reason_codes": [rejected.reason],
        "detail": rejected.detail[:500],
    }
    return record


def quarantined_record(
    rejected: Rejected,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    now: datetime,
) -> dict[str, Any]:
    """The ``QuarantinedRecord`` that keeps a rejected record whole, with its reason."""
    return {
        "reason": rejected.reason,
        "detail": rejected.detail[:500],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": now,
        "key": key,
        "value": value,
    }


def decision_entry(
    *,
    recipient: str,
    outcome: str,
    route: str | None,
    legal_basis: str | None,
    purpose: str | None,
    rule_ids: Sequence[str],
    reason_codes: Sequence[str],
    obligations: Sequence[str],
    field_actions: Mapping[str, str],
) -> dict[str, Any]:
    """One entry of a decision record: what was decided about one candidate recipient.

    A deny shares no field, so its entry lists no field actions: "every field dropped" is
    what the outcome already says, and writing it out for every denied candidate made the
    decision record several times larger than everything it shared.
    """
    return {
        "recipient": recipient,
        "outcome": outcome,
        "route": route,
        "legal_basis": legal_basis,
        "purpose": purpose,
        "person_told": "when_safe" if "tell_victim_when_safe" in obligations else None,
        "rule_ids": list(rule_ids),
        "reason_codes": list(reason_codes),
        "obligations": list(obligations),
        "field_actions": {} if outcome == "deny" else dict(field_actions),
    }


def decision_audit(
    ctx: AuditContext,
    *,
    event: Mapping[str, Any],
    event_type: str,
    schema_fingerprint: bytes,
    source: str,
    decisions: Sequence[Mapping[str, Any]],
    now: datetime,
    new_id: uuid.UUID | None = None,
    subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The audit record of every sharing decision about one event: one entry per candidate
    recipient (from :func:`decision_entry`), in the order they were decided, with keyed
    hashes of the grounds the discloser stated (:func:`grounds_ref`, FVA-07).

    One record per event rather than per (event, recipient) pair: the facts about the event
    (its subjects, case, source, consent) are written once, and the broker produces one audit
    record per event instead of one per candidate, which was most of its per-event cost.
    ``subjects`` are the event's subject references when the caller has them already.
    """
    header = event.get("header") or {}
    record = audit_base(ctx, "decision", now, new_id or uuid.uuid4())
    record |= {
        "event_id": str(header.get("event_id")),
        "event_type": event_type,
        "schema_fingerprint": schema_fingerprint.hex(),
        "source_agency": source,
        **decision_facts(ctx, event),
        "subject_refs": list(subjects)
        if subjects is not None
        else subject_refs(ctx.subject_key, event),
        "decisions": [dict(d) for d in decisions],
    }
    return record


def decision_facts(ctx: AuditContext, event: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a decision record that the event itself gives, beyond its id and type:
    its case reference, the consent it states, and keyed hashes of the grounds the discloser
    stated (FVA-07). :func:`decision_audit` and the broker's pipeline, which writes the same
    record without building it (``RecordParts.decision``), both take them from here."""
    header = event.get("header") or {}
    sharing = header.get("sharing") or {}
    justification, accountable = stated_grounds(event)
    return {
        "case_ref": case_ref(ctx.subject_key, str(header.get("case_id", ""))),
        "consent": sharing.get("consent"),
        "justification_ref": grounds_ref(ctx.subject_key, "justification", justification),
        "accountable_ref": grounds_ref(ctx.subject_key, "accountable", accountable),
    }


def audited_pairs(record: Mapping[str, Any]) -> Iterator[tuple[str | None, str | None]]:
    """The (recipient, outcome) pairs one decoded audit record speaks for: every entry of a
    decision record, or the record's own recipient and outcome for a single-recipient act."""
    entries = record.get("decisions") or ()
    if entries:
        for entry in entries:
            yield entry["recipient"], entry["outcome"]
    else:
        yield record.get("recipient"), record.get("outcome")

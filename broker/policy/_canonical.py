"""The policy hash: SHA-256 over one canonical serialisation of everything a decision depends on.

Included: settings, vocabularies, every rule (in order, with its prose), the agency registry,
and every event schema's fingerprint with each field's path and classes (classes are not part
of an Avro fingerprint, yet they decide field plans). Excluded: comments, layout, positions,
scenario tests and approvals, none of which changes a decision. The hash goes on every audit
record and is what privacy officers sign.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from broker.policy._model import PolicySet

FORMAT = 1


def canonical_document(policy: PolicySet) -> dict[str, Any]:
    """The plain data the hash is taken over."""
    vocab = policy.vocabulary
    return {
        "format": FORMAT,
        "name": policy.name,
        "version": policy.version,
        "required_approvals": policy.required_approvals,
        "vocabulary": {
            "purposes": dict(vocab.purposes),
            "routes": [
                {"id": r.id, "description": r.description, "exempt": sorted(r.exempt_triggers)}
                for r in vocab.routes
            ],
            "legal_bases": {
                k: {"route": b.route, "description": b.description}
                for k, b in vocab.legal_bases.items()
            },
            "obligations": dict(vocab.obligations),
            "reasons": dict(vocab.reasons),
            "queues": dict(vocab.queues),
            "law": dict(vocab.law),
        },
        "rules": [rule.canonical() for rule in policy.rules],
        "registry": policy.registry.model_dump(mode="json"),
        "schemas": [
            {
                "name": schema.name,
                "version": schema.version,
                "fingerprint": schema.fingerprint_hex,
                "fields": [[f.path, f.classification, *f.inherited] for f in schema.fields],
            }
            for schema in policy.schemas
            if schema.kind == "event"
        ],
    }


def canonical_bytes(policy: PolicySet) -> bytes:
    """Sorted-key, compact, UTF-8 JSON of :func:`canonical_document`."""
    return json.dumps(
        canonical_document(policy), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def policy_hash(policy: PolicySet) -> str:
    """The policy set's SHA-256, as 64 hex digits."""
    return hashlib.sha256(canonical_bytes(policy)).hexdigest()

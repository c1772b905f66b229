"""The package says what it offers, and every error carries a distinct reason code."""

from __future__ import annotations

import re

import broker.envelope as envelope
from broker._errors import TiakiError


def test_all_names_exist_and_are_exported() -> None:
    assert sorted(envelope.__all__) == sorted(set(envelope.__all__))
    for name in envelope.__all__:
        assert hasattr(envelope, name), name
    public = {n for n in dir(envelope) if not n.startswith("_")}
    assert public - set(envelope.__all__) <= {"annotations"}


def test_error_family_is_rooted_at_tiaki_error_with_unique_snake_case_reasons() -> None:
    classes = [
        obj
        for obj in vars(envelope).values()
        if isinstance(obj, type) and issubclass(obj, envelope.EnvelopeError)
    ]
    assert len(classes) >= 15
    reasons = [cls.quarantine_reason for cls in classes]
    assert len(reasons) == len(set(reasons))
    for cls in classes:
        assert issubclass(cls, TiakiError)
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.quarantine_reason)
        assert str(cls())  # a short default message, never empty
    assert issubclass(envelope.KeyStoreError, TiakiError)
    assert not issubclass(envelope.KeyStoreError, envelope.EnvelopeError)

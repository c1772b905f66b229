"""No personal information reaches a log line, whatever a developer passes (canary values)."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from broker._logging import (
    SAFE_KEYS,
    SCRUBBED,
    configure_logging,
    scrub_personal_information,
    typed_text_looks_personal,
)

CANARIES = {
    "name": "Canary Tūhoe-Smith",
    "nhi": "ZZZ0016",
    "email": "canary.person@example.invalid",
    "phone": "+64 21 555 0199",
    "address": "17 Canary Lane, Ōtautahi",
}


def test_unknown_keys_are_scrubbed_and_safe_keys_kept() -> None:
    out = scrub_personal_information(
        None, "info", {"event": "admitted", "agency": "police", "offset": 7, **CANARIES}
    )
    assert out["agency"] == "police"
    assert out["offset"] == 7
    assert all(out[key] == SCRUBBED for key in CANARIES)


def test_personal_values_under_safe_keys_are_scrubbed() -> None:
    for value in (CANARIES["nhi"], CANARIES["email"], CANARIES["phone"]):
        assert scrub_personal_information(None, "info", {"reason": value})["reason"] == SCRUBBED
    assert scrub_personal_information(None, "info", {"reason": "tampered"})["reason"] == "tampered"


def test_structures_are_scrubbed_even_under_safe_keys() -> None:
    out = scrub_personal_information(None, "info", {"event_type": {"name": CANARIES["name"]}})
    assert out["event_type"] == SCRUBBED


def test_rendered_lines_hold_no_canary() -> None:
    stream = io.StringIO()
    configure_logging(stream)
    log = structlog.get_logger()
    log.info("quarantined", reason="header_mismatch", record=CANARIES, **CANARIES)
    log.warning("policy rejected", policy_hash="ab" * 32, detail=CANARIES["address"])
    text = stream.getvalue()
    assert len(text.splitlines()) == 2
    assert json.loads(text.splitlines()[0])["reason"] == "header_mismatch"
    for canary in CANARIES.values():
        assert canary not in text


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=40), max_size=6))
def test_output_keys_are_input_keys_and_every_kept_value_is_from_a_safe_key(
    entries: dict[str, str],
) -> None:
    out = scrub_personal_information(None, "info", dict(entries))
    assert set(out) == set(entries)
    for key, value in out.items():
        assert value == SCRUBBED or key in SAFE_KEYS


def test_key_ids_are_kept_only_in_the_format_tiaki_makes_them() -> None:
    kept = "police.sig.20261201T120439Z.1a2b3c4d"
    assert scrub_personal_information(None, "info", {"key_id": kept})["key_id"] == kept
    for forged in (CANARIES["name"], f"{CANARIES['nhi']}.sig.20261201T120439Z.1a2b3c4d", 7):
        assert scrub_personal_information(None, "info", {"key_id": forged})["key_id"] == SCRUBBED


def test_standard_library_records_come_out_as_scrubbed_json() -> None:
    """aiokafka logs through the standard library: its lines must be JSON and scrubbed too."""
    import logging

    stream = io.StringIO()
    configure_logging(stream)
    try:
        library = logging.getLogger("aiokafka.consumer.group_coordinator")
        library.warning("Heartbeat failed for group %s", "tiaki-broker")
        library.error("could not deliver to %s", CANARIES["email"])
        try:
            raise ValueError(CANARIES["address"])
        except ValueError:
            library.exception("failed on %s", "ingress")
        library.debug("below the level: not written")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        configure_logging()  # put the handler back on stderr
    assert [line["level"] for line in lines] == ["warning", "error", "error"]
    assert lines[0]["event"] == "Heartbeat failed for group tiaki-broker"
    assert lines[0]["logger"] == "aiokafka.consumer.group_coordinator"
    assert "timestamp" in lines[0]
    assert lines[1]["event"] == SCRUBBED
    assert lines[2]["error_type"] == "ValueError"
    assert "exc_info" not in lines[2]
    text = stream.getvalue()
    for canary in CANARIES.values():
        assert canary not in text


def test_configuring_again_replaces_the_standard_library_handler() -> None:
    import logging

    first, second = io.StringIO(), io.StringIO()
    configure_logging(first)
    configure_logging(second)
    try:
        logging.getLogger("aiokafka").warning("once")
    finally:
        configure_logging()
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_the_index_rebuild_warning_keeps_its_layouts() -> None:
    """`audit index rebuilt` says from which layout to which: numbers Tiaki makes, which the
    scrubber used to blank."""
    entry = {"event": "audit index rebuilt", "layout_was": 0, "layout": 4}
    assert scrub_personal_information(None, "warning", dict(entry)) == entry


@pytest.mark.parametrize(
    "typed",
    [
        "Synthetic Person, DOB 12/05/1990",
        "lives at 12 Example St now",
        "NHI zzz0016 on file",
        "now at 9 Te Rapa Road",
        "Police NIA 12345678",
        "born 1990-05-12",
    ],
)
def test_typed_reasons_holding_an_identifier_date_or_address_are_refused(typed: str) -> None:
    """A reviewer's justification is kept in clear on the audit log for good; the log
    scrubber's own pattern missed each of these (lower case, short numbers, dates, streets)."""
    assert typed_text_looks_personal(typed)


@pytest.mark.parametrize(
    "typed",
    [
        "risk confirmed at the daily meeting; police must act",
        "not necessary for the plan (GUIDE-01)",
        "tier 3 case, s20 purpose stated, 2 agencies already involved",
        "Family Violence Act 2018 s20; Oranga Tamariki Act 1989 s66",  # citations
        "SAM 2024 outcome; Privacy Act 2020 IPP 11",
    ],
)
def test_typed_reasons_without_them_pass(typed: str) -> None:
    assert not typed_text_looks_personal(typed)

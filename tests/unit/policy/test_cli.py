"""The privacy officer's commands: explain, simulate, diff, keygen, sign, verify, and the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker._cli import main
from broker.policy import (
    ApprovalError,
    PolicyStore,
    compile_policy,
    generate_officer_key,
    load_policy_set,
    load_roster,
)
from tests.unit.policy.conftest import POLICIES, SCHEMAS, copy_policies

EXAMPLES = SCHEMAS / "examples"


def test_explain_shows_rules_decision_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "policy",
        "explain",
        str(EXAMPLES / "HealthScreeningOutcome.json"),
        "--recipient",
        "safe-whanau",
        "--policies",
        str(POLICIES),
        "--at",
        "2025-03-05",
        "--participating",
        "--set",
        "risk=medium",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ed-disclosure-to-specialist-ngo" in out
    assert "decision  review -> review" in out
    assert "consent_refused_below_high" in out
    assert "clinical_notes" in out
    assert "default (no rule names it)" in out


def test_simulate_json_says_what_each_agency_receives(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "policy",
        "simulate",
        str(EXAMPLES),
        "--policies",
        str(POLICIES),
        "--at",
        "2025-03-05",
        "--participating",
        "--json",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kaupapa = [
        r
        for r in rows
        if r["event_type"] == "nz.tiaki.FamilyHarmEpisodeReport"
        and r["recipient"] == "te-whare-tiaki"
    ]
    assert kaupapa[0]["outcome"] == "share_minimised"
    assert "location.street_address" not in kaupapa[0]["released"]
    assert all(not r["released"] for r in rows if r["outcome"] in ("deny", "review", "refer"))


def test_simulate_reads_records_with_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = json.loads((EXAMPLES / "CorrectionsReleaseNotification.json").read_text())
    record["header"]["sharing"] = {  # the discloser's grounds (FVA-03); the example has none
        "purpose": "victim_protection",
        "legal_route": "fva_s20",
        "justification": "Synthetic: the victim is at risk on release.",
        "accountable_role": "Synthetic probation manager",
    }
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(
            {"record": record, "context": {"purpose": "victim_protection", "participates": True}}
        )
        + "\n"
    )
    assert (
        main(["policy", "simulate", str(events), "--policies", str(POLICIES), "--at", "2025-03-05"])
        == 0
    )
    out = capsys.readouterr().out
    assert "safe-whanau        share_minimised" in out
    assert "residence_address.suburb: generalise:suburb" in out


def test_diff_lists_changed_decisions(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = policy_copy / "rules" / "30-fva-s20.yaml"
    rules.write_text(
        rules.read_text().replace(
            "      location: generalise:suburb\n      narrative: drop\n      contact: drop",
            "      location: generalise:region\n      narrative: drop\n      contact: drop",
        )
    )
    argv = [
        "policy",
        "diff",
        str(POLICIES),
        str(policy_copy),
        "--events",
        str(EXAMPLES),
        "--at",
        "2025-03-05",
        "--participating",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("te-whare-tiaki: location.suburb: generalise:suburb -> drop" in line for line in out)
    assert any(
        "te-whare-tiaki: location.region: generalise:suburb -> generalise:region" in line
        for line in out
    )
    assert out[-1].endswith("change(s)")
    assert (
        main(
            [
                "policy",
                "diff",
                str(POLICIES),
                str(POLICIES),
                "--events",
                str(EXAMPLES),
                "--at",
                "2025-03-05",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "0 change(s)"


def _officers(tmp_path: Path, policy_copy: Path, names: list[str]) -> dict[str, Path]:
    keys = {}
    entries = []
    for name in names:
        key = tmp_path / ".tiaki" / "officers" / f"{name}.key"
        public = generate_officer_key(key)
        keys[name] = key
        entries.append(f"  - name: {name}\n    public_key: {public}\n")
    roster = "officers:\n" + "".join(entries)
    (policy_copy / "officers.yaml").write_text(roster)
    # ...and the deployment's trusted roster, which `policy verify` checks against by default
    (tmp_path / ".tiaki" / "officers" / "roster.yaml").write_text(roster)
    return keys


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TIAKI_HOME in the test's folder, so no test reads the developer's .tiaki."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / ".tiaki"))
    return tmp_path / ".tiaki"


def test_sign_and_verify_need_the_required_approvals(
    tmp_path: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _officers(tmp_path, policy_copy, ["aroha", "ben", "mere"])
    folder = str(policy_copy)
    assert main(["policy", "verify", folder]) == 1
    assert "has 0 of 2 required approvals" in capsys.readouterr().err
    assert main(["policy", "sign", folder, "--officer", "aroha", "--key", str(keys["aroha"])]) == 0
    assert main(["policy", "verify", folder]) == 1
    assert "has 1 of 2 required approvals" in capsys.readouterr().err
    assert main(["policy", "sign", folder, "--officer", "ben", "--key", str(keys["ben"])]) == 0
    assert main(["policy", "verify", folder]) == 0
    roster = tmp_path / ".tiaki" / "officers" / "roster.yaml"
    assert capsys.readouterr().out.endswith(
        f"approved by aroha, ben (2 of 2 required; trusted roster: {roster})\n"
    )
    # Any change to the policy makes the approvals stale.
    rules = policy_copy / "rules" / "50-ipp11.yaml"
    rules.write_text(rules.read_text().replace("risk: keep", "narrative: keep"))
    assert main(["policy", "verify", folder]) == 1
    assert "has 0 of 2 required approvals" in capsys.readouterr().err


def test_a_forged_approval_is_refused(
    tmp_path: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _officers(tmp_path, policy_copy, ["aroha", "ben"])
    for name in ("aroha", "ben"):
        assert (
            main(["policy", "sign", str(policy_copy), "--officer", name, "--key", str(keys[name])])
            == 0
        )
    # ben's key signs a file that claims to be aroha's.
    forged = json.loads((policy_copy / "approvals" / "ben.json").read_text())
    forged["officer"] = "aroha"
    (policy_copy / "approvals" / "aroha.json").write_text(json.dumps(forged))
    assert main(["policy", "verify", str(policy_copy)]) == 1
    assert "the approval by aroha does not verify" in capsys.readouterr().err


def test_signing_with_another_officers_key_is_refused_before_anything_is_written(
    tmp_path: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to write approvals/aroha.json, which verify then called altered."""
    keys = _officers(tmp_path, policy_copy, ["aroha", "ben"])
    folder = str(policy_copy)
    assert main(["policy", "sign", folder, "--officer", "aroha", "--key", str(keys["ben"])]) == 1
    err = capsys.readouterr().err
    assert err == f"tiaki: error: {keys['ben']} is not aroha's key on the trusted roster\n"
    assert main(["policy", "sign", folder, "--officer", "nobody", "--key", str(keys["ben"])]) == 1
    assert "nobody is not on the trusted roster" in capsys.readouterr().err
    assert not (policy_copy / "approvals" / "aroha.json").exists()
    assert not (policy_copy / "approvals" / "nobody.json").exists()


def test_a_trusted_roster_not_the_sets_own(
    tmp_path: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _officers(tmp_path, policy_copy, ["mallory", "eve"])
    for name in ("mallory", "eve"):
        main(["policy", "sign", str(policy_copy), "--officer", name, "--key", str(keys[name])])
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text("officers: []\n")
    assert main(["policy", "verify", str(policy_copy), "--roster", str(trusted)]) == 1
    assert "0 of 2" in capsys.readouterr().err


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k.key"
    assert main(["policy", "keygen", "--officer", "aroha", "--out", str(out)]) == 0
    assert "public_key: " in capsys.readouterr().out
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert main(["policy", "keygen", "--officer", "aroha", "--out", str(out)]) == 1


def test_the_store_swaps_only_to_an_approved_set(tmp_path: Path, policy_copy: Path) -> None:
    keys = _officers(tmp_path, policy_copy, ["aroha", "ben"])
    for name in ("aroha", "ben"):
        main(["policy", "sign", str(policy_copy), "--officer", name, "--key", str(keys[name])])
    roster = load_roster(policy_copy / "officers.yaml")
    store = PolicyStore(roster)
    first = store.load(policy_copy)
    assert store.approved_by == ("aroha", "ben")
    # An edited, unsigned draft is refused and the approved engine stays.
    rules = policy_copy / "rules" / "50-ipp11.yaml"
    rules.write_text(rules.read_text().replace("risk: keep", "narrative: keep"))
    assert store.load(policy_copy) is first
    assert isinstance(store.last_error, ApprovalError)
    # Once both officers approve the draft, it replaces the old engine.
    for name in ("aroha", "ben"):
        main(["policy", "sign", str(policy_copy), "--officer", name, "--key", str(keys[name])])
    second = store.load(policy_copy)
    assert second is not first
    assert second.policy_hash == compile_policy(load_policy_set(policy_copy)).policy_hash
    assert store.last_error is None


def test_the_sets_own_roster_is_not_trusted_by_default(
    tmp_path: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """officers.yaml in the set is not covered by its hash: whoever replaces it with their
    own officers and signs must still fail against the deployment's roster."""
    _officers(tmp_path, policy_copy, ["aroha", "ben"])  # the trusted roster in TIAKI_HOME
    # Intruders with the same names replace the set's officers.yaml with their own keys.
    intruders = _officers(tmp_path / "intruders", policy_copy, ["aroha", "ben"])
    own = str(policy_copy / "officers.yaml")
    for name, key in intruders.items():
        sign = ["policy", "sign", str(policy_copy), "--officer", name, "--key", str(key)]
        assert main(sign) == 1  # the deployment's roster knows these keys are not theirs
        assert "is not" in capsys.readouterr().err
        assert main([*sign, "--roster", own]) == 0  # signed against their own roster
    assert main(["policy", "verify", str(policy_copy)]) == 1
    err = capsys.readouterr().err
    assert "does not verify" in err or "0 of 2" in err, err
    assert f"(trusted roster: {tmp_path / '.tiaki' / 'officers' / 'roster.yaml'})" in err
    assert err.count("\n") == 1


def test_verify_without_a_trusted_roster_refuses(
    home: Path, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "verify", str(policy_copy)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"tiaki: error: no trusted roster at {home / 'officers' / 'roster.yaml'} (the one "
        "'tiaki broker run' trusts); pass --roster FILE with the officers your brokers trust\n"
    )


def test_the_shipped_set_is_unsigned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nobody = tmp_path / "roster.yaml"
    nobody.write_text("officers: []\n")
    assert main(["policy", "verify", str(POLICIES), "--roster", str(nobody)]) == 1
    err = capsys.readouterr().err
    assert "0 of 2 required approvals" in err
    assert err.count("\n") == 1


def test_without_a_folder_the_commands_use_the_brokers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given no folder, validate, hash, sign and verify work on TIAKI_POLICIES, the set
    ``tiaki broker run`` loads, not on a ``policies`` under the current directory."""
    monkeypatch.chdir(copy_policies(tmp_path / "elsewhere").parent)  # an unedited ./policies
    brokers = copy_policies(tmp_path / "release")
    rules = brokers / "rules" / "50-ipp11.yaml"
    rules.write_text(rules.read_text().replace("risk: keep", "narrative: keep"))
    digest = compile_policy(load_policy_set(brokers)).policy_hash
    shipped = compile_policy(load_policy_set(POLICIES)).policy_hash
    assert digest != shipped
    monkeypatch.setenv("TIAKI_POLICIES", str(brokers))

    assert main(["policy", "hash"]) == 0
    assert capsys.readouterr().out == f"{digest}\n"
    assert main(["policy", "validate"]) == 0
    assert capsys.readouterr().out.endswith(f" hash {digest}\n")
    event = EXAMPLES / "FamilyHarmEpisodeReport.json"
    assert main(["policy", "simulate", str(event), "--at", "2025-03-05", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["policy_hash"] for row in rows} == {digest}
    keys = _officers(tmp_path, brokers, ["aroha", "ben"])
    for name, key in keys.items():
        assert main(["policy", "sign", "--officer", name, "--key", str(key)]) == 0
    assert not list(Path("policies", "approvals").glob("*.json"))  # the local set is unsigned
    assert main(["policy", "verify"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"ok: {digest} approved by")
    # A folder given still wins.
    assert main(["policy", "hash", "policies"]) == 0
    assert capsys.readouterr().out == f"{shipped}\n"


@pytest.mark.parametrize("command", ["validate", "test", "hash", "verify"])
def test_a_missing_tiaki_policies_is_one_line_not_the_local_folder(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(copy_policies(tmp_path).parent)  # a valid ./policies it must not fall back to
    _officers(tmp_path, tmp_path / "policies", ["aroha"])  # verify's roster is there
    missing = tmp_path / "not-deployed"
    monkeypatch.setenv("TIAKI_POLICIES", str(missing))
    assert main(["policy", command]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tiaki: error: invalid setting TIAKI_POLICIES={str(missing)!r}: no such folder\n"


def test_without_tiaki_policies_a_missing_local_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIAKI_POLICIES", raising=False)
    assert main(["policy", "hash"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tiaki: error: no policies folder here (TIAKI_POLICIES is not set)")
    assert err.count("\n") == 1

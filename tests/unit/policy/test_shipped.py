"""The shipped policy set passes its own scenarios, through the same command officers run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker._cli import main
from broker.policy import Engine, PolicySet, load_scenarios, run_scenarios
from tests.unit.policy.conftest import POLICIES


def test_tiaki_policy_test_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(POLICIES)]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = [line for line in out if re.fullmatch(r"\d+ passed, \d+ failed", line)]
    assert len(summary) == 1
    passed, failed = map(int, re.findall(r"\d+", summary[0]))
    assert failed == 0
    assert passed >= 12 + 30
    assert "every rule was exercised by at least one scenario" in out


def test_every_law_scenario_is_encoded(policy: PolicySet, engine: Engine) -> None:
    scenarios = load_scenarios(policy.tests_folder, engine)
    numbers = {int(m.group(1)) for s in scenarios if (m := re.match(r"LAW (\d+)", s.name))}
    assert numbers == set(range(1, 13))
    own = [s for s in scenarios if not s.name.startswith("LAW ")]
    assert len(own) >= 30
    assert not run_scenarios(engine, scenarios).failed


def test_validate_reports_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(POLICIES)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_a_failing_scenario_fails_the_command(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = policy_copy
    path = folder / "tests" / "routes.yaml"
    path.write_text(
        path.read_text().replace(
            "expect: {outcome: deny, reasons: [no_permit]}", "expect: {outcome: share}", 1
        )
    )
    assert main(["policy", "test", str(folder)]) == 1
    captured = capsys.readouterr()
    assert re.fullmatch(r"\d+ passed, 1 failed", captured.out.splitlines()[-1])
    assert "FAIL " in captured.out
    assert captured.err.count("\n") == 1

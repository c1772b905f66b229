"""``tiaki policy``: the privacy officer's tools. All of them work offline, without Kafka.

Faults in policy files print as ``file:line:column: message (did you mean 'x'?)``, one per
line; every command exits 1 when something is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from broker._settings import Settings, default_folder
from broker.policy._engine import Engine, compile_policy
from broker.policy._errors import ApprovalError, PolicyValidationError, ScenarioFailure
from broker.policy._load import load_policy_set
from broker.policy._model import Decision
from broker.policy._reader import suggest
from broker.policy._scenarios import load_scenarios, run_scenarios
from broker.policy._sign import (
    generate_officer_key,
    load_approvals,
    load_roster,
    sign_policy,
    verify_approvals,
)
from broker.policy._simulate import decisions_for, diff, input_for, load_events, simulate
from broker.policy._store import MINIMUM_APPROVALS

app = typer.Typer(
    help="Sharing policies: validate, test, explain, simulate, diff, sign, verify.",
    no_args_is_help=True,
)

#: Without one, the folder ``tiaki broker run`` loads: an officer validates, tests and signs the
#: set the broker will run, not whichever ``policies`` is under the current directory.
_FOLDER_HELP = "Policy folder (default: $TIAKI_POLICIES, else policies)."
_FOLDER = typer.Argument(help=_FOLDER_HELP)
_FOLDER_OPTION = typer.Option("--policies", help=_FOLDER_HELP)
_AT = typer.Option("--at", help="Decision date, YYYY-MM-DD (default: today).")
_PARTICIPATING = typer.Option(
    "--participating", help="Treat every candidate recipient as working on the case."
)


def _today(at: str | None) -> dt.date:
    if at is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(at)
    except ValueError:
        raise typer.BadParameter(f"--at {at!r}: expected YYYY-MM-DD") from None


def _engine(folder: Path | None) -> Engine:
    """Load and compile ``folder`` (None: the broker's), printing every fault (one per line)
    before failing."""
    try:
        return compile_policy(load_policy_set(folder or default_folder("policies_dir")))
    except PolicyValidationError as exc:
        _print_errors(exc)
        raise typer.Exit(1) from None


def _print_errors(exc: PolicyValidationError) -> None:
    for error in exc.errors:
        print(str(error), file=sys.stderr)
    print(f"tiaki: {len(exc.errors)} error(s)", file=sys.stderr)


@app.command("validate")
def validate(folder: Annotated[Path | None, _FOLDER] = None) -> None:
    """Check every file of a policy set, and its scenarios; print each fault as file:line:column."""
    engine = _engine(folder)
    try:
        scenarios = load_scenarios(engine.policy.tests_folder, engine)
    except PolicyValidationError as exc:
        _print_errors(exc)
        raise typer.Exit(1) from None
    policy = engine.policy
    print(
        f"ok: {len(policy.rules)} rules, {len(scenarios)} scenarios; "
        f"policy {policy.version} hash {engine.policy_hash}"
    )


@app.command("test")
def run_tests(folder: Annotated[Path | None, _FOLDER] = None) -> None:
    """Run the scenario files; print failures, rules no test exercised, and 'N passed, N failed'."""
    engine = _engine(folder)
    try:
        scenarios = load_scenarios(engine.policy.tests_folder, engine)
    except PolicyValidationError as exc:
        _print_errors(exc)
        raise typer.Exit(1) from None
    report = run_scenarios(engine, scenarios)
    for scenario, problems in report.failed:
        print(f"FAIL {scenario.where}: {scenario.name}")
        for problem in problems:
            print(f"    {problem}")
    unexercised = [rule.id for rule in engine.rules if rule.id not in report.exercised]
    if unexercised:
        print("rules no test exercised: " + ", ".join(unexercised))
    else:
        print("every rule was exercised by at least one scenario")
    print(report.summary())
    if report.failed:
        raise ScenarioFailure(f"{len(report.failed)} scenario(s) failed")


def _context(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; the keys and values are checked with the event's context."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set {pair!r}: expected key=value")
        out[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return out


@app.command("explain")
def explain(
    event: Annotated[Path, typer.Argument(help="An event file (plain JSON, one event).")],
    recipient: Annotated[str, typer.Option("--recipient", help="Recipient agency id.")],
    folder: Annotated[Path | None, _FOLDER_OPTION] = None,
    at: Annotated[str | None, _AT] = None,
    participating: Annotated[bool, _PARTICIPATING] = False,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Context, e.g. --set purpose=victim_protection --set risk=high."
        ),
    ] = None,
) -> None:
    """One event and one recipient: which rules matched, the decision, and the action per field."""
    engine = _engine(folder)
    agencies = [a.id for a in engine.policy.registry.agencies]
    if recipient not in agencies:
        raise typer.BadParameter(
            f"unknown agency {recipient!r}{suggest(recipient, agencies)}", param_hint="--recipient"
        )
    items = load_events(event, engine.policy.schemas)
    if not items:
        raise typer.BadParameter(f"{event}: no event in the file")
    item = items[0]
    context = {**item.context, **_context(settings or [])}
    item = type(item)(item.label, item.record, item.schema, context)
    inp = input_for(engine, item, recipient, at=_today(at), participating=participating)
    decision = decisions_for(
        engine, item, at=_today(at), participating=participating, recipients=[recipient]
    )[recipient]
    print(f"event     {item.label}: {item.schema.label} from {inp.source}")
    print(f"recipient {recipient}  purpose {inp.purpose}")
    print("rules:")
    for trace in engine.trace(inp) or []:
        print(f"    {trace.rule_id:45} {trace.effect.value:7} {trace.result}")
    _print_decision(decision)
    print("fields:")
    plan = decision.plan
    for path, action in decision.field_actions.items():
        source = plan.sources.get(path, "") if plan is not None else ""
        print(f"    {path:50} {action:34} {source}")


def _print_decision(decision: Decision) -> None:
    print(
        f"decision  {decision.outcome.value}" + (f" -> {decision.queue}" if decision.queue else "")
    )
    print(f"route     {decision.route or '-'}  legal basis {decision.legal_basis or '-'}")
    print(
        f"because   rules {', '.join(decision.rule_ids) or '-'}; reasons {', '.join(decision.reason_codes)}"
    )
    print(f"law       {', '.join(decision.law) or '-'}")
    print(f"obligations {', '.join(decision.obligations) or '-'}")


def _as_json(decision: Decision) -> dict[str, Any]:
    return {
        "outcome": decision.outcome.value,
        "route": decision.route,
        "legal_basis": decision.legal_basis,
        "purpose": decision.purpose,
        "queue": decision.queue,
        "rule_ids": list(decision.rule_ids),
        "reason_codes": list(decision.reason_codes),
        "obligations": list(decision.obligations),
        "law": list(decision.law),
        "released": decision.released() if decision.shares else {},
        "policy_hash": decision.policy_hash,
    }


@app.command("simulate")
def simulate_command(
    events: Annotated[
        Path, typer.Argument(help="Events: JSON list, JSON lines, YAML, or a folder of .json.")
    ],
    folder: Annotated[Path | None, _FOLDER_OPTION] = None,
    at: Annotated[str | None, _AT] = None,
    participating: Annotated[bool, _PARTICIPATING] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event and recipient.")
    ] = False,
) -> None:
    """Replay events: what each agency would receive (outcome and released fields)."""
    engine = _engine(folder)
    results = simulate(
        engine,
        load_events(events, engine.policy.schemas),
        at=_today(at),
        participating=participating,
    )
    for event, decisions in results:
        if not as_json:
            print(f"{event.label}: {event.schema.label}")
        for recipient, decision in decisions.items():
            if as_json:
                print(
                    json.dumps(
                        {
                            "event": event.label,
                            "event_type": event.schema.name,
                            "recipient": recipient,
                            **_as_json(decision),
                        },
                        sort_keys=True,
                    )
                )
                continue
            where = f" -> {decision.queue}" if decision.queue else ""
            print(
                f"  {recipient:18} {decision.outcome.value}{where}  [{', '.join(decision.rule_ids) or ', '.join(decision.reason_codes)}]"
            )
            if decision.shares:
                for path, action in decision.released().items():
                    print(f"      {path}: {action}")


@app.command("diff")
def diff_command(
    old: Annotated[Path, typer.Argument(help="The policy folder in force.")],
    new: Annotated[Path, typer.Argument(help="The draft policy folder.")],
    events: Annotated[Path, typer.Option("--events", help="Events to replay under both.")],
    at: Annotated[str | None, _AT] = None,
    participating: Annotated[bool, _PARTICIPATING] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """The (event, recipient, field) decisions that change between two policy versions."""
    before, after = _engine(old), _engine(new)
    changes = diff(
        before,
        after,
        load_events(events, after.policy.schemas),
        at=_today(at),
        participating=participating,
    )
    for change in changes:
        if as_json:
            print(json.dumps(change.__dict__, sort_keys=True))
        else:
            print(
                f"{change.event} -> {change.recipient}: {change.field}: {change.old} -> {change.new}"
            )
    print(f"{len(changes)} change(s)")


@app.command("hash")
def hash_command(folder: Annotated[Path | None, _FOLDER] = None) -> None:
    """Print the policy set's canonical SHA-256 (what officers sign, and audit records carry)."""
    print(_engine(folder).policy_hash)


#: An officer's name is also the name of their approval file (``approvals/NAME.json``).
_OFFICER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_officer(officer: str) -> None:
    if not _OFFICER_NAME.fullmatch(officer):
        raise typer.BadParameter(
            f"--officer {officer!r}: a name of letters, digits, '.', '_' and '-' "
            "(up to 64, starting with a letter or digit), e.g. j-smith"
        )


@app.command("keygen")
def keygen(
    officer: Annotated[
        str, typer.Option("--officer", help="The officer's name as the roster has it.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Private key file, e.g. .tiaki/officers/NAME.key.")
    ],
) -> None:
    """Make a development Ed25519 key for an officer; print the roster entry to add."""
    _check_officer(officer)
    public = generate_officer_key(out)
    print(f"private key: {out} (keep it out of the repository)")
    print(f"roster entry:\n  - name: {officer}\n    public_key: {public}")


@app.command("sign")
def sign(
    folder: Annotated[Path | None, _FOLDER] = None,
    officer: Annotated[str, typer.Option("--officer", help="Your name as the roster has it.")] = "",
    key: Annotated[Path, typer.Option("--key", help="Your Ed25519 private key file.")] = Path(),
    roster: Annotated[
        Path | None,
        typer.Option(
            "--roster",
            help="Trusted officers, to check the key is yours (default: TIAKI_HOME/officers/"
            "roster.yaml if it exists, as 'tiaki broker run' trusts).",
        ),
    ] = None,
) -> None:
    """Approve the policy set: sign its hash and write approvals/<officer>.json."""
    if not officer or key == Path():
        raise typer.BadParameter("sign needs --officer and --key")
    _check_officer(officer)
    if roster is None:
        default = Settings.from_env().trusted_roster
        roster = default if default.is_file() else None
    trusted = load_roster(roster) if roster is not None else None
    engine = _engine(folder)
    path = sign_policy(
        engine.policy_hash,
        officer,
        key,
        engine.policy.approvals_folder,
        now=dt.datetime.now(dt.UTC),
        roster=trusted,
    )
    print(f"signed {engine.policy_hash} as {officer}: {path}")


@app.command("verify")
def verify(
    folder: Annotated[Path | None, _FOLDER] = None,
    roster: Annotated[
        Path | None,
        typer.Option(
            "--roster",
            help="Trusted officers (default: the deployment's, TIAKI_HOME/officers/roster.yaml, "
            "as 'tiaki broker run' trusts).",
        ),
    ] = None,
) -> None:
    """Refuse a set without its required approvals by officers on the trusted roster.

    The roster is never the set's own ``officers.yaml``: that file is not covered by the
    policy hash, so whoever could edit the set could name themselves its officers.
    """
    if roster is None:
        roster = Settings.from_env().trusted_roster
        if not roster.is_file():
            raise ApprovalError(
                f"no trusted roster at {roster} (the one 'tiaki broker run' trusts); "
                "pass --roster FILE with the officers your brokers trust"
            )
    engine = _engine(folder)
    policy = engine.policy
    try:
        officers = load_roster(roster)
    except PolicyValidationError as exc:
        _print_errors(exc)
        raise typer.Exit(1) from None
    required = max(policy.required_approvals, MINIMUM_APPROVALS)  # as the broker counts
    try:
        approved = verify_approvals(
            engine.policy_hash, required, load_approvals(policy.approvals_folder), officers
        )
    except ApprovalError as exc:
        raise ApprovalError(f"{exc} (trusted roster: {roster})") from None
    if not approved:  # pragma: no cover - verify_approvals raises first
        raise ApprovalError("no approvals")
    print(
        f"ok: {engine.policy_hash} approved by {', '.join(approved)} "
        f"({len(approved)} of {required} required; trusted roster: {roster})"
    )

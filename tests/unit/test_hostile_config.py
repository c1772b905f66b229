"""Hostile configuration files get one line naming the file and the field, never a traceback:
malformed Avro schema files, NUL characters in the paths of a policy set or an adapter
configuration, a fault in a key a YAML merge (``<<: *anchor``) brought into an adapter
configuration or the registry, and connection profiles aiokafka would refuse only when a
command connects.

The property test at the end mutates shipped schema files (keys dropped, values of the wrong
JSON type) and requires every load to succeed or fail as :class:`SchemaError`.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import AdapterConfigError
from adapters._config import load_config
from broker._cli import main
from broker._errors import ConfigError
from broker.codec import SchemaError, check_evolution, load_schemas
from broker.platform import Profile, load_profile
from broker.policy import PolicyValidationError, load_policy_set
from broker.registry import RegistryError, load_registry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
CASE_ALLOCATION = Path("events/CaseAllocation/v1.avsc")
ADDRESS = Path("types/Address/v1.avsc")
PASSWORD = "pw-never-shown-4e1f"

Mutation = Callable[[dict[str, Any]], None]


def _check_all(folder: Path) -> None:
    """What ``tiaki schema check`` does: load, flatten every schema, check every evolution."""
    schemas = load_schemas(folder)
    for schema in schemas:
        assert schema.fields is not None
    for name in schemas.names():
        check_evolution(schemas.versions(name))


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, folder, ignore=shutil.ignore_patterns("examples"))
    return folder


def _edit(folder: Path, relative: Path, change: Mutation) -> Path:
    path = folder / relative
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))
    return path


def _second_version(folder: Path, relative: Path, change: Mutation) -> Path:
    """Add v2 of the schema at ``relative``: v1 with one field added, then ``change``d."""
    raw = json.loads((folder / relative).read_text())
    raw["fields"].append(
        {
            "name": "added",
            "type": ["null", "string"],
            "default": None,
            "doc": "Added in v2.",
            "classification": "operational",
        }
    )
    change(raw)
    path = folder / relative.with_name("v2.avsc")
    path.write_text(json.dumps(raw, indent=2))
    return path


# -- schema files -------------------------------------------------------------------------


def test_the_reported_case_a_field_without_type_names_file_and_field(
    schema_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _edit(schema_copy, CASE_ALLOCATION, lambda raw: raw["fields"][1].pop("type"))
    with pytest.raises(SchemaError) as caught:
        load_schemas(schema_copy)
    assert str(caught.value) == f"{path}: fields[1]: field 'agency' needs 'type'"
    assert main(["schema", "check", "--schemas", str(schema_copy)]) == 1
    err = capsys.readouterr().err
    assert err == f"tiaki: error: {path}: fields[1]: field 'agency' needs 'type'\n"


def _set(*steps: Any) -> Mutation:
    """A mutation setting the value at ``steps[:-1]`` to ``steps[-1]``."""

    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        for step in steps[:-2]:
            node = node[step]
        node[steps[-2]] = steps[-1]

    return change


def _drop(*steps: Any) -> Mutation:
    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        for step in steps[:-1]:
            node = node[step]
        del node[steps[-1]]

    return change


# Each was a KeyError, TypeError or AttributeError (crash sites in _load, _model, _compat).
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("type", ["record"]), "a schema file holds one named type"),
        (_set("tiaki.practice_step", ["allocation"]), "'tiaki.practice_step' must be one of"),
        (_set("fields", 0, 5), "fields[0]: a field is an object, not a number"),
        (_set("fields", {"header": 1}), "fields: a record needs a list of fields"),
        (_set("fields", 1, "agency"), "fields[1]: a field is an object, not a string"),
        (_set("fields", 1, "classification", ["operational"]), "classification ['operational']"),
        (_set("fields", 2, "type", "type", ["enum"]), "fields[2].type.type: must be record, enum"),
        (_set("fields", 2, "type", 7), "fields[2].type: a type is a name, a union (list) or an"),
        (_drop("fields", 2, "type", "name"), "fields[2].type.name: an enum needs a 'name'"),
        (_set("fields", 2, "type", "symbols", "joined"), "fields[2].type.symbols: an enum needs"),
        (_set("fields", 2, "type", "symbols", [["joined"]]), "symbols: must be a list of Avro"),
        (_set("fields", 2, "type", "fields", "x"), "fields[2].type.fields: an enum has no fields"),
        (_set("fields", 5, "type", 1, {"type": "array"}), "fields[5].type[1]: an array needs"),
        (_set("fields", 5, "type", 1, {"type": "map"}), "fields[5].type[1]: a map needs 'values'"),
        (_set("fields", 5, "type", 1, {"type": "record", "name": "R", "doc": "d"}), "a record"),
        (
            _set("fields", 4, "type", "logicalType", ["timestamp-millis"]),
            "fields[4].type.logicalType: must be a string",
        ),
        (_set("fields", 1, "name", "a.b"), "fields[1].name: a field needs a 'name'"),
        (_set("fields", 1, "name", "header"), "fields[1].name: a second field named 'header'"),
        (_set("fields", 1, "aliases", [["x"]]), "fields[1].aliases: must be a list of Avro names"),
        (_set("aliases", 5), "aliases: must be a list of Avro names"),
        (_set("namespace", 5), "namespace: must be dotted Avro names"),
        (_set("tiaki.uses", "nz.tiaki.EventHeader", True), "'tiaki.uses' maps full type names"),
    ],
)
def test_a_malformed_schema_file_is_a_schema_error_naming_file_and_place(
    schema_copy: Path, change: Mutation, expected: str
) -> None:
    path = _edit(schema_copy, CASE_ALLOCATION, change)
    with pytest.raises(SchemaError) as caught:
        _check_all(schema_copy)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop("fields"), "fields: a record needs a list of fields"),
        (_set("fields", 0, "aliases", [["street"]]), "fields[0].aliases: must be a list"),
        (_set("fields", 0, "name", ["line1"]), "fields[0].name: a field needs a 'name'"),
        (_set("aliases", 5), "aliases: must be a list of Avro names"),
        (_set("fields", 0, "type", {"type": "fixed", "name": "F", "size": "3"}), "size"),
    ],
)
def test_a_malformed_later_version_never_reaches_the_evolution_check(
    schema_copy: Path, change: Mutation, expected: str
) -> None:
    path = _second_version(schema_copy, ADDRESS, change)
    with pytest.raises(SchemaError) as caught:
        _check_all(schema_copy)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_the_shipped_schemas_still_load_and_check(schema_copy: Path) -> None:
    _second_version(schema_copy, ADDRESS, lambda raw: None)
    _check_all(schema_copy)


# -- the property: a mutated schema loads or is a SchemaError ------------------------------

_NAMES = st.sampled_from(
    ["", "x", "null", "string", "record", "enum", "array", "map", "fixed", "nz.tiaki.Address"]
)
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | _NAMES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["type", "name", "fields", "items", "values", "symbols", "size", "doc"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=6,
)
_TARGETS = [CASE_ALLOCATION, ADDRESS, Path("types/RequestState/v4.avsc")]


def _spots(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value below the root of ``node``."""
    if isinstance(node, dict):
        items: Iterator[tuple[Any, Any]] = iter(node.items())
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        yield (*at, key)
        yield from _spots(value, (*at, key))


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "schemas"
    shutil.copytree(SCHEMAS, folder, ignore=shutil.ignore_patterns("examples"))
    return folder


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_mutated_schema_loads_or_is_a_schema_error(fuzz_folder: Path, data: Any) -> None:
    target = data.draw(st.sampled_from(_TARGETS))
    original = (fuzz_folder / target).read_text()
    raw = json.loads(original)
    for _ in range(data.draw(st.integers(1, 3))):
        spots = list(_spots(raw))
        if not spots:
            break
        *parents, last = data.draw(st.sampled_from(spots))
        node: Any = raw
        for step in parents:
            node = node[step]
        if data.draw(st.booleans()):
            del node[last]
        else:
            node[last] = copy.deepcopy(data.draw(_JSON))
    (fuzz_folder / target).write_text(json.dumps(raw))
    message = ""
    try:
        _check_all(fuzz_folder)  # anything but a SchemaError fails the test
    except SchemaError as exc:
        message = str(exc)
    finally:
        (fuzz_folder / target).write_text(original)
    assert not message or message.startswith(f"{fuzz_folder}/"), message
    assert "\n" not in message


# -- policy.yaml paths ----------------------------------------------------------------------

_POLICY_PATHS = {
    "registry": ROOT / "policies" / "agencies.yaml",
    "schemas": SCHEMAS,
    "vocabulary": ROOT / "policies" / "vocabulary.yaml",
    "rules": ROOT / "policies" / "rules",
    "tests": ROOT / "policies" / "tests",
    "approvals": ROOT / "policies" / "approvals",
    "roster": ROOT / "policies" / "officers.yaml",
}


def _policy_yaml(folder: Path, spoiled: str) -> Path:
    """A policy.yaml naming the shipped files, with ``spoiled``'s path holding a NUL."""
    lines = ["format: 1", "name: Test set", 'version: "1"', "required_approvals: 1"]
    for key, target in _POLICY_PATHS.items():
        lines.append(f'{key}: "a\\0b"' if key == spoiled else f"{key}: {json.dumps(str(target))}")
    folder.mkdir(exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_policy_yaml_of_these_tests_loads_unspoiled(tmp_path: Path) -> None:
    _policy_yaml(tmp_path / "p", spoiled="")
    assert load_policy_set(tmp_path / "p").roster_path == _POLICY_PATHS["roster"]


@pytest.mark.parametrize("key", list(_POLICY_PATHS))
def test_a_nul_in_a_policy_path_is_refused_at_its_position(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _policy_yaml(tmp_path / "p", spoiled=key)
    line = 5 + list(_POLICY_PATHS).index(key)
    expected = f"{path}:{line}:{len(key) + 3}: '{key}' must be a path without NUL characters"
    with pytest.raises(PolicyValidationError) as caught:
        load_policy_set(tmp_path / "p")
    assert str(caught.value) == expected
    assert main(["policy", "validate", str(tmp_path / "p")]) == 1
    out = capsys.readouterr()
    assert expected in out.out + out.err
    assert "Traceback" not in out.out + out.err


# -- adapter configurations -----------------------------------------------------------------

_ADAPTER = """\
agency: police
profile: "{home}/profiles/police.json"
keys: "{home}/keys"
state: "{home}/adapters/police"
key_ref: police
sources:
  - kind: folder
    path: "{home}/exports"
    format: csv
    event_type: FamilyHarmEpisodeReport
    template: "{home}/template.json"
sinks:
  - kind: folder
    path: "{home}/received"
"""


@pytest.fixture
def adapter_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(SCHEMAS))
    (tmp_path / "template.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new", "where", "reason"),
    [
        ('"{home}/profiles/police.json"', '"a\\0b"', "2:1: profile", "a path cannot hold a NUL"),
        ('"{home}/keys"', '"x\\0"', "3:1: keys", "a path cannot hold a NUL"),
        ('"{home}/adapters/police"', '"\\0"', "4:1: state", "a path cannot hold a NUL"),
        ("key_ref: police", 'key_ref: "p\\0"', "5:1: key_ref", "should match pattern"),
        ("key_ref: police", "key_ref: ../keys", "5:1: key_ref", "should match pattern"),
        ('"{home}/exports"', '"e\\0"', "8:5: sources.0.path", "a path cannot hold a NUL"),
        ('"{home}/template.json"', '"t\\0"', "11:5: sources.0.template", "a path cannot hold"),
        ('"{home}/received"', '"r\\0"', "14:5: sinks.0.path", "a path cannot hold a NUL"),
    ],
)
def test_a_nul_in_an_adapter_path_is_refused_by_check(
    adapter_home: Path,
    old: str,
    new: str,
    where: str,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = adapter_home / "adapter.yaml"
    path.write_text(_ADAPTER)
    assert main(["adapter", "check", "--config", str(path)]) == 0  # the unspoiled file passes
    capsys.readouterr()
    assert old in _ADAPTER
    path.write_text(_ADAPTER.replace(old, new, 1))
    with pytest.raises(AdapterConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:{where}: ")
    assert reason in str(caught.value)
    assert main(["adapter", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: error: {path}:{where}: ")
    assert err.count("\n") == 1


# -- YAML merge keys (``<<: *anchor``) ------------------------------------------------------
# A key taken from a merge is in the mapping but has no position of its own there: each was a
# KeyError traceback from ``locate``. The fault is reported at the mapping holding the merge.


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (  # the reviewer's case: a sink's url merged into a folder source
            'agency: police\nsinks: [&s {kind: webhook, url: "http://h/x"}]\n'
            "sources: [{<<: *s, kind: folder, path: /x}]\n",
            "3:11",
        ),
        (
            'agency: police\nsinks:\n  - &s\n    kind: webhook\n    url: "http://h/x"\n'
            "sources:\n  - <<: *s\n    kind: folder\n    path: /x\n",
            "7:5",
        ),
    ],
)
def test_a_fault_in_a_merged_adapter_key_is_one_line_at_the_merge(
    adapter_home: Path, text: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = adapter_home / "adapter.yaml"
    path.write_text(text)
    expected = f"{path}:{where}: sources.0.url: Extra inputs are not permitted"
    with pytest.raises(AdapterConfigError) as caught:
        load_config(path)
    assert str(caught.value) == expected
    assert main(["adapter", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"tiaki: error: {expected}\n"


def test_a_fault_in_a_merged_registry_key_is_one_line_at_the_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copied agency whose id came from the merge: a duplicate id, located at the copy.
    path = tmp_path / "agencies.yaml"
    path.write_text(
        "version: 1\nregions: [canterbury]\nagencies:\n"
        "  - &police\n    id: police\n    name: New Zealand Police\n    kind: police\n"
        "    region: national\n    statutory:\n"
        '      family_violence_agency: {status: confirmed, evidence: "Family Violence Act 2018 s19"}\n'
        '      child_welfare_protection_agency: {status: confirmed, evidence: "Oranga Tamariki Act s2"}\n'
        "      social_services_practitioner_employer: {status: no}\n"
        "  - <<: *police\n    name: Police again\n"
    )
    expected = f"{path}:13:5: duplicate agency id 'police' (first at agencies[0])"
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(caught.value) == expected
    assert main(["registry", "check", str(path)]) == 1
    out = capsys.readouterr()
    assert expected in out.out + out.err
    assert "Traceback" not in out.out + out.err


# -- connection profiles --------------------------------------------------------------------

_PROFILE: dict[str, Any] = {
    "bootstrap_servers": "127.0.0.1:9093",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "admin",
    "sasl_plain_password": PASSWORD,
    "ssl_cafile": "ca.pem",
}


def _profile(folder: Path, principal: str = "admin", **changes: Any) -> Path:
    """``<principal>.json`` in ``folder`` (made 0700), 0600, with ``changes`` to its fields."""
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{principal}.json"
    path.write_text(json.dumps({**_PROFILE, "sasl_plain_username": principal, **changes}))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("security_protocol", "BOGUS", "Input should be 'SASL_SSL'"),
        ("security_protocol", "sasl_ssl", "Input should be 'SASL_SSL'"),
        ("sasl_mechanism", "GSSAPI", "Input should be 'SCRAM-SHA-512'"),
        ("bootstrap_servers", "host:notaport", "'host:notaport' is not host:port"),
        ("bootstrap_servers", "", "names no server"),
        ("bootstrap_servers", " , ", "'' is not host:port"),
        ("bootstrap_servers", "a:1,", "'' is not host:port"),
        ("bootstrap_servers", "a:0", "'a:0' is not host:port"),
        ("bootstrap_servers", "a:65536", "'a:65536' is not host:port"),
        ("bootstrap_servers", "::1", "'::1' is not host:port"),
        ("bootstrap_servers", "[::1]:x", "'[::1]:x' is not host:port"),
        ("bootstrap_servers", "a\0b:1", "is not host:port"),
        ("ssl_cafile", "", "must name the CA certificate file"),
        ("ssl_cafile", "ca\0.pem", "must name the CA certificate file"),
        ("sasl_plain_password", 5, "Input should be a valid string"),
    ],
)
def test_a_bad_profile_field_is_one_line_naming_file_and_field(
    tmp_path: Path, field: str, value: Any, reason: str
) -> None:
    path = _profile(tmp_path / "profiles", **{field: value})
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert reason in message
    assert "\n" not in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "servers", ["127.0.0.1:9093", "kafka-1.example.nz:9093, kafka_2:9094", "[::1]:9093,broker"]
)
def test_profiles_the_clients_accept_still_load(tmp_path: Path, servers: str) -> None:
    profile = load_profile(_profile(tmp_path / "profiles", bootstrap_servers=servers))
    assert profile.bootstrap_servers == servers
    assert profile.ssl_cafile == str(tmp_path / "profiles" / "ca.pem")
    assert PASSWORD not in repr(profile)


def test_a_command_refuses_a_bad_profile_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def connects(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bad profile reached the Kafka client")

    monkeypatch.setattr("broker.platform._cli.provision", connects)
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    path = _profile(tmp_path / "profiles", bootstrap_servers="host:notaport")
    argv = ["provision", "--dry-run", "--registry", str(ROOT / "policies" / "agencies.yaml")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: error: {path}: bootstrap_servers: 'host:notaport' is not")
    assert err.count("\n") == 1
    assert PASSWORD not in err


def test_a_profile_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="bootstrap_servers"):
        Profile(**{**_PROFILE, "bootstrap_servers": "host:notaport"})

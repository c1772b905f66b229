"""Loading the agency registry from YAML, with errors that point at file:line:column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker._yaml import SourceError, load_yaml, locate
from broker.registry._model import NATIONAL, Registry, StatusKind


class RegistryError(SourceError):
    """The agency registry is malformed; the message names file:line:column and the reason."""


def _describe(loc: tuple[str | int, ...]) -> str:
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def load_registry(path: Path) -> Registry:
    """Load and validate the registry at ``path``; raise :class:`RegistryError` on any fault."""
    try:
        data = load_yaml(path)
    except SourceError as exc:
        raise RegistryError(exc.path, exc.line, exc.column, exc.reason) from None
    if not isinstance(data, dict):
        raise RegistryError(path, 1, 1, "the registry must be a mapping with 'agencies'")
    try:
        registry = Registry.model_validate(_plain(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line, column = locate(data, loc)
        where = _describe(loc)
        message = str(first["msg"]).removeprefix("Value error, ")
        raise RegistryError(
            path, line, column, f"{where}: {message}" if where else message
        ) from None
    _check_references(path, data, registry)
    return registry


def _check_references(path: Path, data: Any, registry: Registry) -> None:
    seen: dict[str, int] = {}
    key_sets: dict[str, int] = {}
    regions = set(registry.regions) | {NATIONAL}
    for index, agency in enumerate(registry.agencies):
        if agency.id in seen:
            line, column = locate(data, ("agencies", index, "id"))
            raise RegistryError(
                path,
                line,
                column,
                f"duplicate agency id {agency.id!r} (first at agencies[{seen[agency.id]}])",
            )
        seen[agency.id] = index
        holder = key_sets.setdefault(agency.key_ref, index)
        if holder != index:
            # Two agencies on one key set: each could open what is sealed to the other, and
            # sign as the other.
            line, column = locate(data, ("agencies", index, "keys" if agency.keys else "id"))
            raise RegistryError(
                path,
                line,
                column,
                f"key set {agency.key_ref!r} is already agencies[{holder}]'s: every agency "
                "has a key set of its own",
            )
        if agency.region not in regions:
            line, column = locate(data, ("agencies", index, "region"))
            known = ", ".join(sorted(regions))
            raise RegistryError(
                path, line, column, f"unknown region {agency.region!r}; known regions: {known}"
            )
        if agency.coordinates_cases and not agency.has_status(StatusKind.FAMILY_VIOLENCE_AGENCY):
            # Its allocations decide who receives a case's information (need to know): only a
            # body the FVA s20 route covers may hold that authority.
            line, column = locate(data, ("agencies", index, "coordinates_cases"))
            raise RegistryError(
                path,
                line,
                column,
                "coordinates_cases needs a confirmed family_violence_agency status",
            )


def _plain(node: Any) -> Any:
    """Convert ruamel's commented containers to plain ones for pydantic."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node

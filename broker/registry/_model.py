"""The agency registry as values: who takes part, with which statutory status and evidence.

Statutory status is a *fact about an agency*, recorded with the evidence for it (the schedule,
regulation or approval that makes it so). The policy engine reads it; it never guesses. A status
that is not ``confirmed`` is treated as unknown, and unknown is never "allowed" (LAW.md FVA-01).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

#: Principal names that belong to Tiaki itself; an agency may not take one.
RESERVED_PRINCIPALS = frozenset({"broker", "compliance", "admin", "tiaki", "internal"})

#: An agency id: lower-case letters, digits and hyphens, 3 to 40 long.
AGENCY_ID_PATTERN = r"[a-z][a-z0-9-]{1,38}[a-z0-9]"
AgencyId = Annotated[str, StringConstraints(pattern=f"^{AGENCY_ID_PATTERN}$")]
RegionId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")]

#: The region of agencies that work nationally rather than in one region.
NATIONAL = "national"


class AgencyKind(StrEnum):
    """What sort of organisation an agency is; policies condition on it."""

    POLICE = "police"
    CHILD_WELFARE = "child_welfare"
    CORRECTIONS = "corrections"
    HEALTH = "health"
    SOCIAL_DEVELOPMENT = "social_development"
    EDUCATION = "education"
    SPECIALIST_NGO = "specialist_ngo"
    KAUPAPA_MAORI = "kaupapa_maori"
    IWI = "iwi"
    REGIONAL_HUB = "regional_hub"


class StatusKind(StrEnum):
    """The statutory statuses the sharing routes depend on."""

    #: Family Violence Act 2018 s19: listed family violence agency.
    FAMILY_VIOLENCE_AGENCY = "family_violence_agency"
    #: Oranga Tamariki Act 1989 s2: child welfare and protection agency.
    CHILD_WELFARE_PROTECTION_AGENCY = "child_welfare_protection_agency"
    #: Employs or engages social services practitioners (FVA s19).
    SOCIAL_SERVICES_PRACTITIONER_EMPLOYER = "social_services_practitioner_employer"


class StatusLevel(StrEnum):
    CONFIRMED = "confirmed"
    #: Claimed but not yet evidenced; treated exactly like unknown by the policy engine.
    UNCONFIRMED = "unconfirmed"
    NO = "no"


class StatutoryStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    status: StatusLevel
    evidence: str | None = Field(default=None, min_length=8)

    @model_validator(mode="after")
    def _confirmed_needs_evidence(self) -> StatutoryStatus:
        if self.status is StatusLevel.CONFIRMED and not self.evidence:
            raise ValueError(
                "a confirmed status needs its evidence (statute, schedule or approval)"
            )
        return self


class Agency(BaseModel):
    """One participant: a government agency, NGO, school, kaupapa Māori or iwi service, or hub."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: AgencyId
    name: str = Field(min_length=2)
    kind: AgencyKind
    region: RegionId
    statutory: dict[StatusKind, StatutoryStatus]
    kaupapa_maori: bool = False
    #: A body able to act on a serious threat (Privacy Act IPP 11(f)); police always can.
    can_act: bool = False
    #: Coordinates cases: hosts the daily safety assessment meeting (LAW.md ISR-01), so its
    #: meeting outcomes, case allocations and task assignments set who works on a case and the
    #: case's risk tier. The broker refuses those events from any other agency
    #: (``broker.runtime._cases``); only a confirmed family violence agency may coordinate.
    coordinates_cases: bool = False
    #: ISO 3166 country where the agency holds data (IPP 12: overseas disclosure needs a basis).
    country: str = Field(default="NZ", pattern=r"^[A-Z]{2}$")
    #: Reference into the key registry (the agency's key set); defaults to the agency id.
    #: Never one of Tiaki's own principals' (``broker``: the agency would be given the
    #: broker's keys), and never another agency's (the loader checks).
    keys: AgencyId | None = None

    @property
    def overseas(self) -> bool:
        """Whether the agency holds data outside New Zealand (PA-06: disclosure needs IPP 12
        grounds)."""
        return self.country != "NZ"

    @field_validator("statutory")
    @classmethod
    def _every_status_recorded(
        cls, value: dict[StatusKind, StatutoryStatus]
    ) -> dict[StatusKind, StatutoryStatus]:
        missing = [kind.value for kind in StatusKind if kind not in value]
        if missing:
            raise ValueError(f"statutory status missing for: {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Agency:
        if self.id in RESERVED_PRINCIPALS:
            raise ValueError(f"id {self.id!r} is reserved for Tiaki's own principals")
        if self.keys in RESERVED_PRINCIPALS:
            raise ValueError(f"keys {self.keys!r} is reserved for Tiaki's own principals")
        if self.kind is AgencyKind.REGIONAL_HUB and self.region == NATIONAL:
            raise ValueError("a regional hub needs a region, not 'national'")
        return self

    def has_status(self, kind: StatusKind) -> bool:
        """True only for a confirmed status; unconfirmed and unknown are never "allowed"."""
        entry = self.statutory.get(kind)
        return entry is not None and entry.status is StatusLevel.CONFIRMED

    @property
    def key_ref(self) -> str:
        return self.keys or self.id


class Registry(BaseModel):
    """The whole registry: regions and agencies, ids unique."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    regions: list[RegionId] = Field(min_length=1)
    agencies: list[Agency] = Field(min_length=1)

    def get(self, agency_id: str) -> Agency | None:
        return next((a for a in self.agencies if a.id == agency_id), None)

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.agencies]

    @property
    def coordinators(self) -> list[str]:
        """The agencies that coordinate cases (``coordinates_cases``)."""
        return [a.id for a in self.agencies if a.coordinates_cases]

    @property
    def hub_regions(self) -> list[str]:
        """Regions that have a regional hub, each of which gets a ``tiaki.hub.<region>`` topic."""
        return sorted({a.region for a in self.agencies if a.kind is AgencyKind.REGIONAL_HUB})

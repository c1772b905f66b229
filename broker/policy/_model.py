"""Policies as values: vocabularies, rules, the whole set, and what a decision takes and gives.

Everything here is frozen. A :class:`PolicySet` is what :func:`load_policy_set` reads from YAML;
:func:`compile_policy` turns it into an :class:`~broker.policy.Engine`. A :class:`DecisionInput`
is one (event, candidate recipient) question; a :class:`Decision` is the answer, with its
explanation (rule ids, reason codes, LAW.md references) and an action for every field.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.codec import record_finder

if TYPE_CHECKING:
    from broker.codec import Schema, SchemaSet
    from broker.codec._finder import Finder
    from broker.policy._fields import FieldPlan
    from broker.registry import Registry


class Effect(StrEnum):
    """What a rule does when it matches."""

    #: Share under a named legal basis, for a named purpose, with a field plan.
    PERMIT = "permit"
    #: Deny the whole decision, or (with ``fields``/``classes``) withhold those fields. Wins.
    FORBID = "forbid"
    #: Hold for a person in a review queue.
    REVIEW = "review"
    #: Not a sharing decision: hand to a named workflow (breach, aggregation).
    REFER = "refer"


class Outcome(StrEnum):
    """The answer for one (event, recipient)."""

    SHARE = "share"
    #: Shared with at least one field dropped, pseudonymised, generalised or masked.
    SHARE_MINIMISED = "share_minimised"
    #: Held for a person (``Decision.queue`` names the queue); nothing goes automatically.
    REVIEW = "review"
    DENY = "deny"
    #: Handed to a workflow outside per-event sharing (``Decision.queue`` names it).
    REFER = "refer"


class RequestKind(StrEnum):
    """What is being asked: a per-event disclosure, or one of the non-sharing requests."""

    DISCLOSURE = "disclosure"
    AGGREGATE = "aggregate"
    OVERSEAS_TRANSFER = "overseas_transfer"
    DELETION = "deletion"
    BREACH = "breach"


class Trigger(StrEnum):
    """LAW.md "Where software must hand over to a person": the engine's review triggers."""

    HEALTH_LEAVES_HEALTH = "health_leaves_health"
    CHILD_NOT_CONSULTED = "child_not_consulted"
    CONSENT_REFUSED_BELOW_HIGH = "consent_refused_below_high"
    RECIPIENT_STATUS_UNCONFIRMED = "recipient_status_unconfirmed"
    PRIVILEGED_MATERIAL = "privileged_material"
    MAORI_DATA_BEYOND_CASE = "maori_data_beyond_case"
    #: FVA-03: a disclosure on a route in ``GROUNDS_ROUTES`` without a justification or an
    #: accountable role (null or blank). No route may be exempt from it.
    JUSTIFICATION_MISSING = "justification_missing"
    #: OT-04: ``child_consulted: inappropriate`` without ``child_not_consulted_reason``.
    CHILD_NOT_CONSULTED_REASON_MISSING = "child_not_consulted_reason_missing"
    #: PA-06, MDS-02: the recipient holds data outside New Zealand (its registry ``country``),
    #: so IPP 12 grounds are assessed by a person first. No route may be exempt from it.
    RECIPIENT_OVERSEAS = "recipient_overseas"


#: Field actions a rule may give; ``generalise:*`` names the level kept.
FIELD_ACTIONS = (
    "keep",
    "drop",
    "pseudonymise",
    "mask",
    "generalise:year",
    "generalise:month",
    "generalise:suburb",
    "generalise:territorial_authority",
    "generalise:region",
)
DATE_GENERALISATIONS = frozenset({"generalise:year", "generalise:month"})
ADDRESS_GENERALISATIONS: Mapping[str, frozenset[str]] = {
    "generalise:suburb": frozenset({"suburb", "town_city", "territorial_authority", "region"}),
    "generalise:territorial_authority": frozenset({"territorial_authority", "region"}),
    "generalise:region": frozenset({"region"}),
}

#: Values the dynamic conditions take (the first four come from the event schemas' enums).
RISK_LEVELS = ("low", "medium", "high", "unknown")
CONSENT = ("given", "refused", "not_sought_unsafe", "not_sought_impracticable", "unknown")
CHILD_CONSULTED = ("yes", "impracticable", "inappropriate", "not_applicable", "unknown")
PROVENANCE = ("direct", "third_party", "professional_confidence", "unknown")
REQUESTER_ROLES = (
    "ot_chief_executive_delegate",
    "care_and_protection_coordinator",
    "constable",
    "social_worker",
    "health_practitioner",
    "ngo_practitioner",
    "corrections_officer",
    "school_staff",
    "other",
    "unknown",
)
#: On whose behalf information is sought; a person using violence never gets contact or
#: location fields (LAW.md PA-05).
PARTIES = ("agency", "victim", "person_using_violence", "child", "other_whanau", "unknown")
#: Child consultation values that satisfy OTA s66K.
CHILD_CONSULTED_OK = frozenset({"yes", "impracticable", "inappropriate"})
#: Routes whose disclosures and requests carry the discloser's grounds (LAW.md FVA-03): the
#: recipient always receives ``GROUNDS_FIELDS``, whatever the permit's field plan says, and a
#: disclosure without them goes to review (``justification_missing``). The imminent-danger
#: route is not one of them: its minimal disclosure goes at once and a person reviews after.
GROUNDS_ROUTES = frozenset({"fva_s20", "ota_s66c"})
#: The discloser's grounds in every event's header: why they believe sharing will or may help
#: the purpose, and who is accountable. Not information about a person.
GROUNDS_FIELDS = ("header.sharing.justification", "header.sharing.accountable_role")
#: A request states its own grounds too (InformationRequest ``justification``,
#: ``accountable_role``); they travel with it the same way.
REQUEST_GROUNDS_FIELDS = ("justification", "accountable_role")


@dataclass(frozen=True)
class Where:
    """Where something was written: ``file:line:column``."""

    path: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Route:
    """A legal route, in the order LAW.md tries them; some review triggers do not apply to it."""

    id: str
    description: str
    exempt_triggers: frozenset[Trigger]


@dataclass(frozen=True)
class LegalBasis:
    """A provision a permit relies on, under one route."""

    id: str
    route: str
    description: str


@dataclass(frozen=True)
class PolicyVocabulary:
    """The controlled vocabularies in ``policies/vocabulary.yaml``.

    Field classes are not here: they come from ``schemas/vocabulary.json`` so there is one list.
    ``routes`` is in the order LAW.md tries them.
    """

    purposes: Mapping[str, str]
    routes: tuple[Route, ...]
    legal_bases: Mapping[str, LegalBasis]
    obligations: Mapping[str, str]
    reasons: Mapping[str, str]
    queues: Mapping[str, str]
    law: Mapping[str, str]

    def route_rank(self, route: str) -> int:
        """Position of ``route`` in the order routes are tried (unknown routes go last)."""
        for index, item in enumerate(self.routes):
            if item.id == route:
                return index
        return len(self.routes)


@dataclass(frozen=True)
class PartyCondition:
    """Conditions on the source or the recipient agency; ``None`` means any."""

    agencies: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    #: Any one of these statutory statuses, confirmed in the registry.
    statuses: frozenset[str] | None = None
    regions: frozenset[str] | None = None
    kaupapa_maori: bool | None = None
    can_act: bool | None = None
    #: ``True``: holds data outside New Zealand (IPP 12).
    overseas: bool | None = None

    def canonical(self) -> dict[str, Any]:
        return _canonical_fields(self)


@dataclass(frozen=True)
class Conditions:
    """When a rule applies. Every attribute is an allow-list; ``None`` means "any"."""

    kinds: frozenset[str] = frozenset({RequestKind.DISCLOSURE.value})
    events: frozenset[str] | None = None
    source: PartyCondition = field(default_factory=PartyCondition)
    recipient: PartyCondition = field(default_factory=PartyCondition)
    #: Recipient in the source's region (or either national).
    same_region: bool | None = None
    purposes: frozenset[str] | None = None
    legal_routes: frozenset[str] | None = None
    risk: frozenset[str] | None = None
    consent: frozenset[str] | None = None
    child_consulted: frozenset[str] | None = None
    provenance: frozenset[str] | None = None
    requester_role: frozenset[str] | None = None
    on_behalf_of: frozenset[str] | None = None
    imminent_danger: bool | None = None
    privileged: bool | None = None
    suppression_order: bool | None = None
    maori_data: bool | None = None
    participates: bool | None = None
    child_involved: bool | None = None
    #: The record is addressed to the recipient (task assignee, referral target, request holder).
    addressee: bool | None = None

    def canonical(self) -> dict[str, Any]:
        return _canonical_fields(self)


#: Conditions read from the :class:`DecisionInput` at decision time (the rest are static).
DYNAMIC_CONDITIONS = (
    "legal_routes",
    "risk",
    "consent",
    "child_consulted",
    "provenance",
    "requester_role",
    "on_behalf_of",
    "imminent_danger",
    "privileged",
    "suppression_order",
    "maori_data",
    "participates",
    "child_involved",
    "addressee",
)
#: Attribute of :class:`DecisionInput` each dynamic condition reads.
INPUT_ATTRIBUTE = {name: name for name in DYNAMIC_CONDITIONS} | {"legal_routes": "legal_route"}


@dataclass(frozen=True)
class Rule:
    """One sharing rule as written, with where it was written."""

    id: str
    effect: Effect
    description: str
    when: Conditions
    law: tuple[str, ...] = ()
    legal_basis: str | None = None
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    #: Field plan by specific field path (beats ``classes``).
    fields: tuple[tuple[str, str], ...] = ()
    #: Field plan by field class from ``schemas/vocabulary.json``.
    classes: tuple[tuple[str, str], ...] = ()
    obligations: tuple[str, ...] = ()
    reason: str | None = None
    #: Review queue (review rules) or workflow (refer rules).
    queue: str | None = None
    #: An explicit health rule (HIPC-01): releasing health-class fields is intended.
    health_rule: bool = False
    where: Where | None = field(default=None, compare=False)

    @property
    def field_forbid(self) -> bool:
        """A forbid that withholds named fields rather than the whole decision."""
        return self.effect is Effect.FORBID and bool(self.fields or self.classes)

    def canonical(self) -> dict[str, Any]:
        """Plain, ordered data for the policy hash (everything but where it was written)."""
        return {
            "id": self.id,
            "effect": self.effect.value,
            "description": self.description,
            "law": list(self.law),
            "when": self.when.canonical(),
            "legal_basis": self.legal_basis,
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "fields": [list(pair) for pair in self.fields],
            "classes": [list(pair) for pair in self.classes],
            "obligations": list(self.obligations),
            "reason": self.reason,
            "queue": self.queue,
            "health_rule": self.health_rule,
        }

    def active_on(self, day: dt.date) -> bool:
        """Inside the rule's validity dates on ``day``."""
        if self.valid_from is not None and day < self.valid_from:
            return False
        return self.valid_until is None or day <= self.valid_until


@dataclass(frozen=True)
class Officer:
    """A privacy officer whose Ed25519 approval counts."""

    name: str
    public_key: bytes


@dataclass(frozen=True)
class PolicySet:
    """A whole policy set: settings, vocabularies, rules, registry and schemas it was written for."""

    folder: Path
    name: str
    version: str
    required_approvals: int
    vocabulary: PolicyVocabulary
    rules: tuple[Rule, ...]
    registry: Registry
    schemas: SchemaSet
    tests_folder: Path
    approvals_folder: Path
    roster_path: Path

    def rule(self, rule_id: str) -> Rule:
        """The rule with id ``rule_id``; :class:`KeyError` if none."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


@dataclass(frozen=True, slots=True)
class DecisionInput:
    """One question for the engine: may ``recipient`` receive this event, and how minimised?

    The broker fills it from the event's header (``header.sharing``), the case membership state
    and the clock; :meth:`from_record` does that from a decoded record. Enum-valued attributes
    take the symbols of the event schemas' enums (``unknown`` where nothing was stated).
    """

    event_type: str
    source: str
    recipient: str
    purpose: str
    at: dt.date
    schema_version: int | None = None
    kind: str = RequestKind.DISCLOSURE.value
    legal_route: str = "unknown"
    risk: str = "unknown"
    consent: str = "unknown"
    child_consulted: str = "unknown"
    provenance: str = "unknown"
    requester_role: str = "unknown"
    #: ``unknown`` unless derived: counts as a person using violence for PA-05 (fail closed).
    on_behalf_of: str = "unknown"
    imminent_danger: bool = False
    privileged: bool = False
    suppression_order: bool = False
    maori_data: bool = False
    participates: bool = False
    child_involved: bool = False
    addressee: bool = False
    #: The event states a justification and an accountable role, neither blank (FVA-03);
    #: ``False`` unless derived, so an input built by hand fails closed (review).
    grounds_stated: bool = False
    #: The header gives a non-blank ``child_not_consulted_reason`` (OT-04).
    child_reason_stated: bool = False

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        recipient: str,
        *,
        at: dt.date,
        schema_version: int | None = None,
        participates: bool = False,
        lead: bool = False,
        request: RequestFacts | None = None,
        case_risk: str = "unknown",
        **overrides: Any,
    ) -> DecisionInput:
        """Build the input for ``recipient`` from a decoded event, as the broker does.

        ``participates`` and ``lead`` say whether the recipient works on (leads) the case,
        ``request`` is the request the event answers (the broker's request book), and
        ``case_risk`` the case's tier from its meeting. ``overrides`` set any attribute
        directly; they win over what the event states.
        """
        common, addressees = cls.shared_values(
            record,
            at=at,
            schema_version=schema_version,
            request=request,
            case_risk=case_risk,
            leads=(recipient,) if lead else (),
        )
        return cls.for_one(common, recipient, participates, recipient in addressees, overrides)

    @classmethod
    def shared_values(
        cls,
        record: Mapping[str, Any],
        *,
        at: dt.date,
        schema_version: int | None = None,
        request: RequestFacts | None = None,
        case_risk: str = "unknown",
        leads: Iterable[str] = (),
        signals: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """What every recipient's input for one event shares, and the agencies the event is
        addressed to; see :meth:`for_one`. The broker's decider and ``tiaki policy test``
        both build inputs here, so a scenario is decided on the values the broker computes.

        From the header's sharing context: purpose, route (for an answer, the route of the
        ``request`` it answers, when the book knows it), consent, child consultation,
        provenance and the flags. Derived from the event itself (:func:`derived_values`):
        whether a child is involved, whether it holds Māori data, the risk it states, and who
        asked and for whom (the request it is, or the ``request`` it answers). ``case_risk``
        (the meeting's tier) is raised by the event's own risk, never lowered. ``leads`` (the
        case's lead agencies) are addressees of a case record that names none of its own.
        ``signals`` are the record's records that :func:`derived_values` reads, if the caller
        has them (:func:`signal_finder`).
        """
        header = record.get("header") or {}
        sharing = header.get("sharing") or {}
        derived = derived_values(record, at=at, request=request, signals=signals)
        common: dict[str, Any] = {
            "event_type": str(header.get("event_type", "")),
            "source": str(header.get("source_agency", "")),
            "purpose": str(sharing.get("purpose", "unknown")),
            "at": at,
            "schema_version": schema_version,
            "legal_route": str(sharing.get("legal_route", "unknown")),
            "consent": str(sharing.get("consent", "unknown")),
            "child_consulted": str(sharing.get("child_consulted", "unknown")),
            "provenance": str(sharing.get("provenance", "unknown")),
            "imminent_danger": bool(sharing.get("imminent_danger", False)),
            "privileged": bool(sharing.get("privileged", False)),
            "suppression_order": bool(sharing.get("suppression_order", False)),
            **derived,
            "risk": higher_risk(case_risk, derived["risk"]),
        }
        if request is not None and request.legal_route != "unknown":
            # An answer is given under the request's route: a holder labelling its answer
            # ota_s66 cannot make an FVA request's answer an OTA s66 disclosure (OT-05).
            common["legal_route"] = request.legal_route
        addressees = _addressees(record)
        if request is not None:
            addressees.add(request.requester)
        elif not addressees and not _is_request_or_answer(record):
            addressees.update(leads)
        return common, frozenset(addressees)

    @classmethod
    def for_one(
        cls,
        common: Mapping[str, Any],
        recipient: str,
        participates: bool,
        addressee: bool,
        overrides: Mapping[str, Any],
    ) -> DecisionInput:
        """The input for ``recipient`` from :meth:`shared_values`; ``overrides`` win."""
        values = {
            **common,
            "recipient": recipient,
            "participates": participates,
            "addressee": addressee,
            **overrides,
        }
        return cls(**values)


@dataclass(frozen=True)
class RequestFacts:
    """What the broker's request book knows of the request an event answers."""

    requester: str
    requester_role: str = "unknown"
    on_behalf_of: str = "unknown"
    #: The route the request was made under; an answer is decided under it (``unknown``: the
    #: book does not know it, and the answer's header route stands).
    legal_route: str = "unknown"


#: The attributes :func:`derived_values` computes from the event; a policy scenario may not
#: set them to anything else (``tiaki policy test`` reports it as an error).
DERIVED = (
    "child_involved",
    "maori_data",
    "requester_role",
    "on_behalf_of",
    "grounds_stated",
    "child_reason_stated",
)
#: Event types that are a request or an answer to one: their requester and on whose behalf
#: come from the request, and they are addressed to holders or the requester, never the lead.
_REQUEST_EVENTS = frozenset({"InformationRequest", "InformationResponse"})
#: Risk levels from least to most; ``unknown`` is below ``low`` (nothing was stated).
_RISK_ORDER = {"unknown": 0, "low": 1, "medium": 2, "high": 3}
#: Field values that state a risk tier (RiskAssessment, SafetyAssessmentMeetingOutcome).
_TIER_FIELDS = ("final_tier", "risk_tier")
#: Boolean fields whose ``True`` states high risk: non-fatal strangulation (HealthScreening,
#: FamilyHarmEpisodeReport v2) and an immediate safety concern about a child (OTA s15).
_HIGH_RISK_FLAGS = ("strangulation_signs", "strangulation_indicated", "immediate_safety_concern")
#: Fields of class ``maori_data`` in the schemas, by name (a test checks the list is whole).
MAORI_DATA_FIELDS = ("iwi", "whanau_context", "kaupapa_maori_requested", "contains_maori_data")
#: Child-class fields whose non-empty value means a child is involved, by name; the header's
#: ``child_consulted`` counts only when it says a child was (or could not be) consulted.
CHILD_FIELDS = (
    "child",
    "children_present",
    "concern_categories",
    "authorised_pickups",
    "school_arrangements",
)
#: Other values that mark a child: a screening done as a child protection checklist, a
#: disclosure about school attendance, a referral to child advocacy.
_CHILD_VALUES = {
    "screening_type": "child_protection_checklist",
    "category": "school_attendance",
    "service_type": "child_advocacy",
}


#: Every field name :meth:`_Signals.visit` reads, and what it tells: a node with none of
#: them is not visited.
_WATCHED: dict[str, str] = {
    "date_of_birth": "dob",
    "role": "role",
    "relationship_to_victim": "relationship",
    **dict.fromkeys(CHILD_FIELDS, "child_field"),
    **dict.fromkeys(_CHILD_VALUES, "child_value"),
    **dict.fromkeys(MAORI_DATA_FIELDS, "maori"),
    **dict.fromkeys(_TIER_FIELDS, "tier"),
    **dict.fromkeys(_HIGH_RISK_FLAGS, "high_risk"),
}
#: Types of the leaves fastavro decodes to, which :meth:`_Signals.walk` need not look into.
_LEAF_TYPES = frozenset({str, int, float, bool, bytes, type(None), dt.datetime, dt.date})
#: The same names as a set, for the one set operation per node.
_WATCHED_NAMES = frozenset(_WATCHED)


def signal_finder(schema: Schema) -> Finder | None:
    """The finder (:func:`broker.codec.record_finder`) of the records outside the header that
    :func:`derived_values` reads, in an event decoded with ``schema``; None if there is none
    (the record is walked)."""
    return record_finder(schema, _WATCHED_NAMES, _HEADER)


#: What derived_values leaves out of its walk.
_HEADER = frozenset({"header"})


def higher_risk(a: str, b: str) -> str:
    """The higher of two risk levels (``unknown`` lowest)."""
    return a if _RISK_ORDER.get(a, 0) >= _RISK_ORDER.get(b, 0) else b


def derived_values(
    record: Mapping[str, Any],
    *,
    at: dt.date,
    request: RequestFacts | None = None,
    signals: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the broker computes from the event itself rather than reading from its header.

    * ``child_involved``: a person whose role or relationship is child, or whose date of birth
      makes them under 18 on the day of the event; a child-class field that is set; the
      header saying a child was consulted or could not be; the other markers in
      ``_CHILD_VALUES``.
    * ``maori_data``: the header's ``contains_maori_data``, or a Māori data field that is set
      (iwi affiliation, whānau context, a kaupapa Māori service asked for), or an aggregate
      broken down by an ethnicity that is Māori (:func:`maori_breakdown`, MDS-04).
    * ``risk``: the highest risk the event states (a tier, strangulation, an immediate safety
      concern, imminent danger); ``unknown`` if none.
    * ``requester_role``, ``on_behalf_of``: from the request itself, or from ``request`` (the
      request an answer replies to). Any other event is an agency disclosing on its own
      behalf (``agency``); a request or an answer whose request is unknown says
      ``unknown``, which never unlocks a permit and counts as a person using violence for
      PA-05.
    * ``grounds_stated``: the header's sharing context gives a justification and an
      accountable role, neither null nor blank (a request may state either in its own
      ``justification`` and ``accountable_role`` instead); ``child_reason_stated``: it gives a
      non-blank ``child_not_consulted_reason``.

    The values are read from the records outside the header that hold a watched field: found
    by walking the record, or ``signals``, the same records found from its schema
    (:func:`signal_finder`).
    """
    header = record.get("header") or {}
    sharing = header.get("sharing") or {}
    occurred = header.get("occurred_at")
    day = occurred.date() if isinstance(occurred, dt.datetime) else at
    found = _Signals(day)
    if signals is None:
        found.walk({k: v for k, v in record.items() if k != "header"})
    else:
        for node in signals:
            found.visit(node)
    if sharing.get("child_consulted") in CHILD_CONSULTED_OK:
        found.child = True
    kind = _event_kind(record)
    if sharing.get("contains_maori_data") or maori_breakdown(kind, record):
        found.maori = True
    if sharing.get("imminent_danger"):
        found.risk = "high"
    if kind == "InformationRequest":
        role = str(record.get("requester_role") or "unknown")
        behalf = str(record.get("on_behalf_of") or "unknown")
    elif request is not None:
        role, behalf = request.requester_role, request.on_behalf_of
    elif kind in _REQUEST_EVENTS:
        role, behalf = "unknown", "unknown"
    else:
        role, behalf = "unknown", "agency"
    justification, accountable = stated_grounds(record)
    return {
        "child_involved": found.child,
        "maori_data": found.maori,
        "risk": found.risk,
        "requester_role": role,
        "on_behalf_of": behalf,
        "grounds_stated": _stated(justification) and _stated(accountable),
        "child_reason_stated": _stated(sharing.get("child_not_consulted_reason")),
    }


#: The Stats NZ ethnicity classification's level-1 group for Māori: every code at every level
#: beneath it (``2``, ``21``, ``211``, ``21111``) begins with this digit, and no other does.
_MAORI_ETHNICITY_PREFIX = "2"


def maori_breakdown(kind: str, record: Mapping[str, Any]) -> bool:
    """Whether ``record``, of event type ``kind`` (short name), is an aggregate
    (OutcomeIndicator) broken down by an ethnicity that is Māori: a Stats NZ code in the Māori
    group, or a label naming Māori ("Māori", "NZ Maori").

    The sender may not set ``contains_maori_data`` on counts by ethnicity; the breakdown
    itself says it is Māori data (LAW.md MDS-04, scenario 9). A person's own ethnicity in a
    unit record is not read here: that record is about a case, and its Māori data fields
    (iwi, whānau context) mark it.
    """
    if kind != "OutcomeIndicator":
        return False
    codes = record.get("ethnicity") or ()
    return any(
        str(code).startswith(_MAORI_ETHNICITY_PREFIX) or names_maori(str(code)) for code in codes
    )


#: "Māori" written out, with or without its macron or as a double vowel, as a word of a label
#: ("Māori", "NZ Maori", "New Zealand Maaori").
_MAORI_WORD = re.compile(r"(?<![a-z])ma+ori(?![a-z])")


def folded(text: str) -> str:
    """``text`` in lower case without its diacritics (``Kaikōura`` is ``kaikoura``), a
    typographic apostrophe as a plain one: how a name typed in a sender's system is compared
    with the one Tiaki knows."""
    plain = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
    return plain.encode("ascii", "ignore").decode().lower()


def names_maori(label: str) -> bool:
    """Whether an ethnicity given as a label rather than a Stats NZ code names Māori: a
    sender's system may write the group's name where the schema asks for its code."""
    return _MAORI_WORD.search(folded(label)) is not None


def stated_grounds(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """The (justification, accountable person or role) an event states (FVA-03): its header's
    sharing context, or, for an InformationRequest, the request's own ``justification`` and
    ``accountable_role`` where the header leaves either blank. The policy's ``grounds_stated``
    and the decision audit record's keyed hashes of the grounds (FVA-07) both read them here."""
    sharing = (record.get("header") or {}).get("sharing") or {}
    justification = sharing.get("justification")
    accountable = sharing.get("accountable_role")
    if _event_kind(record) == "InformationRequest":
        justification = justification if _stated(justification) else record.get("justification")
        accountable = accountable if _stated(accountable) else record.get("accountable_role")
    return justification, accountable


def _stated(value: Any) -> bool:
    """A text field says something: a string that is not blank."""
    return isinstance(value, str) and bool(value.strip())


class _Signals:
    """Walks a decoded record for the signals :func:`derived_values` reports."""

    def __init__(self, day: dt.date) -> None:
        self.day = day
        self.child = False
        self.maori = False
        self.risk = "unknown"

    def walk(self, value: Any) -> None:
        """Visit every mapping in ``value`` that has a field :meth:`visit` reads.

        It runs on every event, over every field (the broker's hot path): exact type checks
        for what fastavro decodes to (dicts and lists), and a node is visited only if one of
        its keys is watched, found by a set operation rather than a check per name.
        """
        kind = type(value)
        if kind is dict:
            if not _WATCHED_NAMES.isdisjoint(value):
                self.visit(value)
            self._walk_each(value.values())
        elif kind is list or kind is tuple:
            self._walk_each(value)
        elif isinstance(value, Mapping):  # any other mapping: walk it as a dict
            self.walk(dict(value))
        elif isinstance(value, list | tuple):
            self.walk(list(value))

    def _walk_each(self, items: Iterable[Any]) -> None:
        for item in items:
            inner = type(item)
            if (
                inner is dict
                or inner is list
                or (inner not in _LEAF_TYPES and isinstance(item, Mapping | list | tuple))
            ):
                self.walk(item)

    def visit(self, node: Mapping[str, Any]) -> None:
        for name in _WATCHED_NAMES.intersection(node):
            value = node[name]
            what = _WATCHED[name]
            if what == "dob":
                if isinstance(value, dt.date) and _age(value, self.day) < 18:
                    self.child = True
            elif what == "role":
                if value == "child":
                    self.child = True
            elif what == "relationship":
                person = node.get("person") or {}
                if value == "child" and not isinstance(person.get("date_of_birth"), dt.date):
                    self.child = True  # a victim's child of unknown age: treat as a child
            elif what == "child_field":
                if _set(value):
                    self.child = True
            elif what == "child_value":
                if value == _CHILD_VALUES[name]:
                    self.child = True
            elif what == "maori":
                if _set(value):
                    self.maori = True
            elif what == "tier":
                if value in _RISK_ORDER:
                    self.risk = higher_risk(self.risk, str(value))
            elif value is True:  # a high-risk flag
                self.risk = "high"


def _set(value: Any) -> bool:
    """A field holds something: not null, false, empty or ``unknown``."""
    return value not in (None, False, "", "unknown") and value != [] and value != {}


def _age(born: dt.date, day: dt.date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _event_kind(record: Mapping[str, Any]) -> str:
    """The short event type the record's header names (``InformationRequest``)."""
    header = record.get("header") or {}
    return str(header.get("event_type", "")).rpartition(".")[2]


def _is_request_or_answer(record: Mapping[str, Any]) -> bool:
    return _event_kind(record) in _REQUEST_EVENTS


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one (event, recipient), with its explanation.

    ``field_actions`` gives an action for every leaf field of the event's schema (``drop`` for
    every field no rule released); ``plan`` is the compiled form :func:`apply_field_plan` uses.
    For ``review`` the plan is what would be shared if a person approves; for ``deny`` and
    ``refer`` every field is dropped. ``errors`` names rules that failed to evaluate: the
    decision is then ``deny`` (fail closed) and the broker raises an alert.
    """

    outcome: Outcome
    event_type: str
    recipient: str
    purpose: str
    route: str | None
    legal_basis: str | None
    rule_ids: tuple[str, ...]
    reason_codes: tuple[str, ...]
    obligations: tuple[str, ...]
    law: tuple[str, ...]
    queue: str | None
    field_actions: Mapping[str, str]
    policy_hash: str
    schema_version: int | None = None
    plan: FieldPlan | None = field(default=None, repr=False, compare=False)
    errors: tuple[str, ...] = ()

    @property
    def shares(self) -> bool:
        """True when the recipient receives the (minimised) record now."""
        return self.outcome in (Outcome.SHARE, Outcome.SHARE_MINIMISED)

    def released(self) -> dict[str, str]:
        """The fields that leave, with their action (everything but ``drop``)."""
        return {path: act for path, act in self.field_actions.items() if act != "drop"}


def _addressees(record: Mapping[str, Any]) -> set[str]:
    """Agencies an event is addressed to: task assignee, referral target, holders, lead."""
    out = set()
    for key in ("assigned_to", "referred_to", "agency", "lead_agency"):
        ref = record.get(key)
        if isinstance(ref, Mapping) and ref.get("agency_id"):
            out.add(str(ref["agency_id"]))
    for ref in record.get("holders") or ():
        if isinstance(ref, Mapping) and ref.get("agency_id"):
            out.add(str(ref["agency_id"]))
    return out


def _canonical_fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:
        value = getattr(obj, name)
        if isinstance(value, frozenset):
            out[name] = sorted(value)
        elif hasattr(value, "canonical"):
            out[name] = value.canonical()
        else:
            out[name] = value
    return out

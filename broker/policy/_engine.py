"""Compiling a policy set into lookup tables and closures, and deciding with them.

Compile time does everything that does not depend on the event's facts:

* each rule's static conditions (request kind, event type, source and recipient agency, kind,
  status, region) are resolved against the registry and schemas, and the rule is filed under
  ``(kind, event type, recipient)`` with the set of sources it accepts. The table for one
  ``(kind, event type, source, recipient)``, and within it the bucket for one purpose, are cut
  from that on first use, so compiling is linear in the rules (not in rules x sources) and a
  decision looks at only the handful of rules that could apply, however large the set grows;
* a recipient whose required statutory status is ``unconfirmed`` is filed with a flag: a
  permit that matches it goes to a person, never straight out (LAW.md FVA-01);
* each rule's dynamic conditions (risk, consent, child consultation, provenance, flags…) become
  one closure: an ``attrgetter`` and a set lookup over the allowed combinations;
* each permit's field plan is resolved against every version of every event it covers. On a
  route that carries the discloser's grounds (``GROUNDS_ROUTES``: FVA s20, OTA s66C) the plan
  keeps the header's sharing ``justification`` and ``accountable_role`` (and a request's own),
  whatever the rule or a field-level forbid says: they are the discloser's grounds, not
  information about a person, and LAW.md FVA-03 says they travel with the disclosure.

A decision then walks one bucket in this order, as DESIGN.md "Policies" says::

    whole-decision forbid  ->  deny                      (forbid wins)
    refer rule             ->  refer (workflow)          (not a sharing decision)
    review rule or trigger ->  review (queue)            (LAW.md "hand over to a person")
    first permit by route  ->  share / share_minimised   (routes in LAW.md's order)
    nothing                ->  deny                      (default deny)

Field-level forbids then drop their fields from whatever the permit released. A rule that
raises while being evaluated makes the decision ``deny`` with ``evaluation_error`` and names the
rule in ``Decision.errors`` (fail closed). Decisions are immutable and depend only on the
bucket and the verdict, so each bucket caches the few distinct decisions it produces.

Each bucket also memoises its decisions by the input attributes it can read: the dynamic
conditions its rules name, the attributes the review triggers read, the schema version, and the
date when a rule in it is dated. Evaluation is a pure function of exactly those, so a repeated
combination -- the common case in a running broker -- costs one attribute tuple and one dict
lookup whatever the size of the bucket or the rule set (a lazily built decision table keyed by
the dynamic conditions). A first sight walks the bucket as above.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any

from broker.codec import Schema
from broker.policy._canonical import policy_hash
from broker.policy._fields import (
    FieldPlan,
    compile_plan,
    drop_all,
    forbidden_paths,
    leaves,
    with_forbidden,
)
from broker.policy._load import agency_facts, party_matches
from broker.policy._model import (
    CHILD_CONSULTED_OK,
    DYNAMIC_CONDITIONS,
    GROUNDS_FIELDS,
    GROUNDS_ROUTES,
    INPUT_ATTRIBUTE,
    REQUEST_GROUNDS_FIELDS,
    Conditions,
    Decision,
    DecisionInput,
    Effect,
    Outcome,
    PartyCondition,
    PolicySet,
    Rule,
    Trigger,
)
from broker.policy._pseudonym import Pseudonymiser
from broker.registry import NATIONAL, AgencyKind

Check = Callable[[DecisionInput], bool]
_TABLE_LIMIT = 4096
_CACHE_LIMIT = 512
#: Memoised inputs per bucket (cleared when full) and per-purpose buckets kept per table.
_MEMO_LIMIT = 1024
_BUCKETS_LIMIT = 64
#: Input attributes every decision may read besides the rules' own: the review triggers.
_TRIGGER_ATTRIBUTES = (
    "schema_version",
    "risk",
    "consent",
    "child_consulted",
    "child_involved",
    "privileged",
    "suppression_order",
    "maori_data",
    "participates",
    "grounds_stated",
    "child_reason_stated",
)
#: Review queue for each trigger (the Māori data one goes to data governance, MDS-04).
TRIGGER_QUEUE = {t: "review" for t in Trigger} | {
    Trigger.MAORI_DATA_BEYOND_CASE: "governance_review",
    Trigger.RECIPIENT_OVERSEAS: "privacy_review",
}
#: Added to every share that carries Māori data (MDS-01: provenance travels with it).
MAORI_OBLIGATION = "keep_maori_data_provenance"
_STATUS, _HEALTH, _CHILD, _CONSENT, _PRIVILEGED, _MAORI = 1, 2, 4, 8, 16, 32
_GROUNDS, _CHILD_REASON, _OVERSEAS = 64, 128, 256
#: Trigger bits in the order reason codes list them.
_TRIGGER_BITS = (
    (_STATUS, Trigger.RECIPIENT_STATUS_UNCONFIRMED),
    (_HEALTH, Trigger.HEALTH_LEAVES_HEALTH),
    (_CHILD, Trigger.CHILD_NOT_CONSULTED),
    (_CONSENT, Trigger.CONSENT_REFUSED_BELOW_HIGH),
    (_PRIVILEGED, Trigger.PRIVILEGED_MATERIAL),
    (_MAORI, Trigger.MAORI_DATA_BEYOND_CASE),
    (_GROUNDS, Trigger.JUSTIFICATION_MISSING),
    (_CHILD_REASON, Trigger.CHILD_NOT_CONSULTED_REASON_MISSING),
    (_OVERSEAS, Trigger.RECIPIENT_OVERSEAS),
)
_NOTHING: frozenset[str] = frozenset()
#: Enum members as module constants: ``Effect.FORBID`` is a slow class lookup on Python 3.11.
_PERMIT, _FORBID, _REVIEW, _REFER = Effect.PERMIT, Effect.FORBID, Effect.REVIEW, Effect.REFER


@dataclass(eq=False)
class _Compiled:
    rule: Rule
    index: int
    rank: int
    route: str | None
    check: Check
    dated: bool
    #: Input attributes ``check`` reads.
    reads: tuple[str, ...] = ()
    plans: dict[tuple[str, int], FieldPlan] = field(default_factory=dict)
    forbidden: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict)
    health_rule: bool = False
    #: A permit on a route in ``GROUNDS_ROUTES``: its plans keep the discloser's grounds.
    grounds: bool = False
    #: Review triggers this rule's route is exempt from, as bits (see ``_TRIGGER_BITS``).
    exempt: int = 0
    #: ``rule.effect`` and ``rule.when.purposes``, read often when buckets are cut.
    effect: Effect = field(init=False)
    purposes: frozenset[str] | None = field(init=False)

    def __post_init__(self) -> None:
        self.effect = self.rule.effect
        self.purposes = self.rule.when.purposes

    def active(self, inp: DecisionInput) -> bool:
        return not self.dated or self.rule.active_on(inp.at)


@dataclass(eq=False)
class _Bucket:
    """The rules that may apply to one (kind, event, source, recipient, purpose)."""

    forbids: tuple[_Compiled, ...]
    reviews: tuple[_Compiled, ...]
    #: Permits in route order, each with "matches only through an unconfirmed status".
    permits: tuple[tuple[_Compiled, bool], ...]
    health_boundary: bool
    #: The recipient holds data outside New Zealand (IPP 12).
    overseas: bool
    #: The input attributes this bucket's decision depends on, as one tuple (the memo key).
    key: Callable[[DecisionInput], tuple[Any, ...]]
    cache: dict[tuple[Any, ...], Decision] = field(default_factory=dict)
    memo: dict[tuple[Any, ...], Decision] = field(default_factory=dict)


class _Table:
    """The rules filed under one (kind, event, source, recipient).

    Buckets per purpose are built on first use (a few microseconds, once), so compiling stays
    linear in the number of rules. Each purpose gets its own bucket (its decisions name it).
    """

    __slots__ = ("boundary", "buckets", "entries", "overseas")

    def __init__(
        self, entries: tuple[tuple[_Compiled, bool], ...], boundary: bool, overseas: bool
    ) -> None:
        self.entries = entries
        self.boundary = boundary
        self.overseas = overseas
        self.buckets: dict[str, _Bucket] = {}

    def bucket(self, purpose: str) -> _Bucket:
        found = self.buckets.get(purpose)
        if found is None:
            found = self._make(purpose)
            if len(self.buckets) < _BUCKETS_LIMIT:  # purposes outside the vocabulary: bounded
                self.buckets[purpose] = found
        return found

    def _make(self, purpose: str) -> _Bucket:
        forbids: list[_Compiled] = []
        reviews: list[_Compiled] = []
        permits: list[tuple[int, int, _Compiled, bool]] = []
        reads = dict.fromkeys(_TRIGGER_ATTRIBUTES)
        for c, unsure in self.entries:
            if c.purposes is not None and purpose not in c.purposes:
                continue
            if c.effect is _PERMIT:
                permits.append((c.rank, c.index, c, unsure))
            elif c.effect is _FORBID:
                forbids.append(c)
            else:  # review and refer
                reviews.append(c)
            for name in c.reads:
                reads[name] = None
            if c.dated:
                reads["at"] = None
        permits.sort(key=itemgetter(0, 1))
        return _Bucket(
            forbids=tuple(forbids),
            reviews=tuple(reviews),
            permits=tuple((c, u) for _, _, c, u in permits),  # in route order
            health_boundary=self.boundary,
            overseas=self.overseas,
            key=attrgetter(*reads),
        )


#: Marks an index key whose table has not been cut yet.
_UNBUILT = _Table((), False, False)
#: One rule filed under (kind, event, recipient): the sources it accepts, "unsure" flag.
_Filed = tuple[_Compiled, frozenset[str], bool]


@dataclass(frozen=True)
class RuleTrace:
    """How one rule fared for one input (``tiaki policy explain``)."""

    rule_id: str
    effect: Effect
    #: ``matched``, ``no match``, ``inactive`` (outside its dates), ``unconfirmed status``.
    result: str


def _always(inp: DecisionInput) -> bool:
    return True


def check_reads(conditions: Conditions) -> tuple[str, ...]:
    """The input attributes :func:`compile_checks` reads for these conditions."""
    return tuple(
        INPUT_ATTRIBUTE[name]
        for name in DYNAMIC_CONDITIONS
        if getattr(conditions, name) is not None
    )


def compile_checks(conditions: Conditions) -> Check:
    """One closure for a rule's dynamic conditions (those read from the input)."""
    checks: list[tuple[str, frozenset[Any]]] = []
    for name in DYNAMIC_CONDITIONS:
        value = getattr(conditions, name)
        if value is None:
            continue
        allowed = frozenset({value}) if isinstance(value, bool) else frozenset(value)
        checks.append((INPUT_ATTRIBUTE[name], allowed))
    if not checks:
        return _always
    if len(checks) == 1:
        get_one = attrgetter(checks[0][0])
        only = checks[0][1]
        return lambda inp: get_one(inp) in only
    get = attrgetter(*(attr for attr, _ in checks))
    if math.prod(len(allowed) for _, allowed in checks) <= _TABLE_LIMIT:
        table = frozenset(itertools.product(*(allowed for _, allowed in checks)))
        return lambda inp: get(inp) in table
    sets = tuple(allowed for _, allowed in checks)
    return lambda inp: all(v in s for v, s in zip(get(inp), sets, strict=True))


class Engine:
    """A compiled policy set. :meth:`decide` is pure and does no I/O."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        self.policy_hash = policy_hash(policy)
        self.rules = policy.rules
        registry = policy.registry
        self._agencies = {a.id: a for a in registry.agencies}
        self._schemas: dict[tuple[str, int], Schema] = {}
        self._latest: dict[str, int] = {}
        for schema in policy.schemas.events():
            for version in policy.schemas.versions(schema.name):
                self._schemas[(schema.name, version.version)] = version
            self._latest[schema.name] = schema.version
        self._drop_all = {key: drop_all(schema) for key, schema in self._schemas.items()}
        self._compiled = [self._compile_rule(i, rule) for i, rule in enumerate(policy.rules)]
        self._filed: dict[tuple[str, str, str], list[_Filed]] = {}
        self._recipients: dict[tuple[str, str], dict[str, None]] = {}
        self._index: dict[tuple[str, str, str, str], _Table | None] = {}
        self._candidates: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self._build_index()
        self._plain: dict[tuple[Any, ...], Decision] = {}
        self._forbid_cache: dict[tuple[Any, ...], FieldPlan] = {}
        #: Memoise decisions per bucket (see the module docstring); off only to measure.
        self.memoise = True

    # -- compile -------------------------------------------------------------------------------

    def _compile_rule(self, index: int, rule: Rule) -> _Compiled:
        vocab = self.policy.vocabulary
        route = vocab.legal_bases[rule.legal_basis].route if rule.legal_basis else None
        compiled = _Compiled(
            rule=rule,
            index=index,
            rank=vocab.route_rank(route) if route else len(vocab.routes),
            route=route,
            check=compile_checks(rule.when),
            reads=check_reads(rule.when),
            dated=rule.valid_from is not None or rule.valid_until is not None,
            health_rule=rule.health_rule,
            grounds=rule.effect is Effect.PERMIT and route in GROUNDS_ROUTES,
        )
        for item in vocab.routes:
            if item.id == route:
                compiled.exempt = sum(bit for bit, t in _TRIGGER_BITS if t in item.exempt_triggers)
        if compiled.grounds:
            compiled.exempt &= ~_GROUNDS  # FVA-03: the loader refuses it too
        events = rule.when.events if rule.when.events is not None else self._latest.keys()
        for (name, version), schema in self._schemas.items():
            if name not in events:
                continue
            if rule.effect is Effect.PERMIT:
                plan = compile_plan(schema, rule.fields, rule.classes, rule.id)
                if compiled.grounds:
                    plan = _with_grounds(plan, schema, rule.fields, rule.classes, rule.id, route)
                compiled.plans[(name, version)] = plan
            elif rule.field_forbid:
                compiled.forbidden[(name, version)] = forbidden_paths(
                    schema, rule.fields, rule.classes
                )
        return compiled

    def _build_index(self) -> None:
        """File each rule under (kind, event, recipient) with the sources it accepts."""
        facts = agency_facts(self.policy.registry)
        events = (*self._latest, "")
        filed = self._filed
        for compiled in self._compiled:
            when = compiled.rule.when
            src_sure, src_unsure = party_matches(when.source, facts)
            rcp_sure, rcp_unsure = party_matches(when.recipient, facts)
            recipients: list[tuple[str, bool]]
            if compiled.rule.effect is Effect.PERMIT:
                sources = src_sure  # an unconfirmed source cannot use a status-based route
                recipients = [(r, False) for r in rcp_sure] + [(r, True) for r in rcp_unsure]
            else:  # forbids and reviews read unconfirmed as "may apply": the safe side
                sources = src_sure | src_unsure
                recipients = [(r, False) for r in rcp_sure | rcp_unsure]
            if when.recipient == PartyCondition() and set(when.kinds) - {"disclosure"}:
                recipients.append(("", False))  # non-sharing requests about no agency
            if not sources:
                continue
            rule_events = when.events if when.events is not None else events
            for kind, event in itertools.product(when.kinds, rule_events):
                for recipient, unsure in recipients:
                    filed.setdefault((kind, event, recipient), []).append(
                        (compiled, sources, unsure)
                    )
                    self._recipients.setdefault((kind, event), {})[recipient] = None

    def _entries(self, key: tuple[str, str, str, str]) -> list[tuple[_Compiled, bool]]:
        """The rules that apply to ``key`` = (kind, event, source, recipient), in rule order."""
        kind, event, source, recipient = key
        if recipient == source:
            return []
        entries = []
        for compiled, sources, unsure in self._filed.get((kind, event, recipient), ()):
            if source not in sources:
                continue
            same_region = compiled.rule.when.same_region
            if (
                same_region is not None
                and recipient
                and self._same_region(source, recipient) != same_region
            ):
                continue
            entries.append((compiled, unsure))
        return entries

    def _locate(self, key: tuple[str, str, str, str]) -> _Table | None:
        """Cut the table for ``key`` on first use; ``None`` when no rule could apply."""
        if (key[0], key[1], key[3]) not in self._filed or key[2] not in self._agencies:
            return None  # nothing filed, or an unknown source: nothing to remember either
        entries = self._entries(key)
        table: _Table | None = None
        if entries and not all(c.rule.field_forbid for c, _ in entries):
            table = self._table(key, entries)  # field forbids alone change nothing (default deny)
        self._index[key] = table
        return table

    def _same_region(self, source: str, recipient: str) -> bool:
        a, b = self._agencies[source].region, self._agencies[recipient].region
        return a == b or NATIONAL in (a, b)

    def _table(
        self, key: tuple[str, str, str, str], entries: list[tuple[_Compiled, bool]]
    ) -> _Table:
        source, recipient = self._agencies[key[2]], self._agencies.get(key[3])
        boundary = source.kind is AgencyKind.HEALTH and (
            recipient is None or recipient.kind is not AgencyKind.HEALTH
        )
        overseas = recipient is not None and recipient.overseas
        return _Table(tuple(entries), boundary, overseas)

    # -- decide --------------------------------------------------------------------------------

    def candidates(self, event_type: str, source: str, kind: str = "disclosure") -> tuple[str, ...]:
        """Recipients some rule could send this event to (the broker asks :meth:`decide` each)."""
        key = (kind, event_type, source)
        found = self._candidates.get(key)
        if found is None:
            recipients = self._recipients.get((kind, event_type), {})
            found = tuple(
                sorted(
                    recipient
                    for recipient in recipients
                    if any(
                        c.effect is not _FORBID
                        for c, _ in self._entries((kind, event_type, source, recipient))
                    )
                )
            )
            if source in self._agencies:
                self._candidates[key] = found
        return found

    def decide(self, inp: DecisionInput) -> Decision:
        """The decision for one (event, candidate recipient). Never raises (fail closed).

        This is the broker's hot path: one index lookup, one bucket, and the bucket's memo of
        decisions by the attributes it reads. A first sight walks the few closures of the
        bucket, tests the review triggers as bits, and takes the cached :class:`Decision` for
        that verdict.
        """
        try:
            key = (inp.kind, inp.event_type, inp.source, inp.recipient)
            table = self._index.get(key, _UNBUILT)
            if table is _UNBUILT:
                table = self._locate(key)
            if table is None:
                return self._no_rules(inp)
            bucket = table.buckets.get(inp.purpose) or table.bucket(inp.purpose)
        except Exception:  # fail closed: the broker alerts on Decision.errors
            return self._error(inp, None)
        try:
            memo_key = bucket.key(inp)
            decision = bucket.memo.get(memo_key)
        except Exception:  # an unhashable value: the walk names the rule it breaks
            return self._evaluate(inp, bucket)
        if decision is not None:
            return decision
        decision = self._evaluate(inp, bucket)
        if self.memoise and not decision.errors:
            memo = bucket.memo
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[memo_key] = decision
        return decision

    def _evaluate(self, inp: DecisionInput, bucket: _Bucket) -> Decision:
        """Walk ``bucket`` for ``inp``: forbids, reviews, permits by route, triggers."""
        current: _Compiled | None = None
        try:
            at = inp.at
            whole: list[_Compiled] = []
            partial: list[_Compiled] = []
            for current in bucket.forbids:
                if current.check(inp) and (not current.dated or current.rule.active_on(at)):
                    (partial if current.forbidden else whole).append(current)
            if whole:
                key0 = (0, tuple(whole), inp.purpose, inp.schema_version)
                return self._cached(inp, bucket, key0, whole, None, False, (), 0, ())
            reviews: list[_Compiled] = []
            for current in bucket.reviews:
                if current.check(inp) and (not current.dated or current.rule.active_on(at)):
                    reviews.append(current)
            chosen: _Compiled | None = None
            unsure_hit: _Compiled | None = None
            expired: list[_Compiled] = []
            for current, unsure in bucket.permits:
                if not current.check(inp):
                    continue
                if current.dated and not current.rule.active_on(at):
                    expired.append(current)
                elif unsure:
                    unsure_hit = unsure_hit or current
                else:
                    chosen = current
                    break
            current = None
            permit = chosen or unsure_hit
            triggers = 0
            if permit is not None:
                plan = self._plan(inp, permit, partial)
                released = plan.released_classes if plan is not None else _NOTHING
                if chosen is None:
                    triggers |= _STATUS
                if bucket.health_boundary and "health" in released and not permit.health_rule:
                    triggers |= _HEALTH
                if ("child" in released or inp.child_involved) and (
                    inp.child_consulted not in CHILD_CONSULTED_OK
                ):
                    triggers |= _CHILD
                if inp.consent == "refused" and inp.risk != "high":
                    triggers |= _CONSENT
                if inp.privileged or inp.suppression_order or "privileged" in released:
                    triggers |= _PRIVILEGED
                # MDS: this record holds Māori data (the header says so, or an iwi or whānau
                # field is set), the plan lets some of it leave, and the recipient is not
                # working on the case. A plan that keeps the class says nothing about a
                # record without Māori data; a record with it whose plan drops every Māori
                # data field sends none.
                if inp.maori_data and "maori_data" in released and not inp.participates:
                    triggers |= _MAORI
                # FVA-03: the discloser's grounds travel with the disclosure; without them a
                # person decides. OT-04: "inappropriate" needs its reason.
                if permit.grounds and not inp.grounds_stated:
                    triggers |= _GROUNDS
                if bucket.overseas:  # PA-06: IPP 12 grounds are a person's judgement
                    triggers |= _OVERSEAS
                if (
                    ("child" in released or inp.child_involved)
                    and inp.child_consulted == "inappropriate"
                    and not inp.child_reason_stated
                ):
                    triggers |= _CHILD_REASON
                triggers &= ~permit.exempt
            key = (
                inp.purpose,
                inp.schema_version,
                tuple(reviews),
                permit,
                tuple(partial),
                triggers,
                tuple(expired) if permit is None else (),
                inp.maori_data,
            )
            return self._cached(
                inp, bucket, key, reviews, permit, chosen is None, partial, triggers, expired
            )
        except Exception:  # fail closed: the broker alerts on Decision.errors
            return self._error(inp, current)

    def _version(self, inp: DecisionInput) -> int | None:
        if inp.schema_version is not None:
            return inp.schema_version
        return self._latest.get(inp.event_type)

    def _plan(
        self, inp: DecisionInput, permit: _Compiled, partial: list[_Compiled]
    ) -> FieldPlan | None:
        version = inp.schema_version or self._latest.get(inp.event_type) or 0
        plan = permit.plans.get((inp.event_type, version))
        if plan is None or not partial:
            return plan
        cache_key = (permit.index, inp.event_type, version, tuple(c.index for c in partial))
        cached = self._forbid_cache.get(cache_key)
        if cached is None:
            schema = self._schemas[(inp.event_type, version)]
            carried = grounds_paths(schema) if permit.grounds else ()  # FVA-03: they travel
            forbidden: dict[str, str] = {}
            for compiled in partial:
                for path in compiled.forbidden.get((inp.event_type, version), ()):
                    if path not in carried:
                        forbidden.setdefault(path, compiled.rule.id)
            cached = with_forbidden(plan, schema, forbidden) if forbidden else plan
            self._forbid_cache[cache_key] = cached
        return cached

    def _cached(
        self,
        inp: DecisionInput,
        bucket: _Bucket,
        key: tuple[Any, ...],
        hits: list[_Compiled],
        permit: _Compiled | None,
        unsure: bool,
        partial: Iterable[_Compiled],
        triggers: int,
        expired: Iterable[_Compiled],
    ) -> Decision:
        decision = bucket.cache.get(key)
        if decision is None:
            found = tuple(t for bit, t in _TRIGGER_BITS if triggers & bit)
            decision = self._build(inp, hits, permit, unsure, list(partial), found, list(expired))
            if len(bucket.cache) >= _CACHE_LIMIT:
                bucket.cache.clear()
            bucket.cache[key] = decision
        return decision

    def _build(
        self,
        inp: DecisionInput,
        hits: list[_Compiled],
        permit: _Compiled | None,
        unsure: bool,
        partial: list[_Compiled],
        triggers: tuple[Trigger, ...],
        expired: list[_Compiled],
    ) -> Decision:
        version = self._version(inp)
        deny_plan = self._drop_all.get((inp.event_type, version or 0))
        forbids = [c for c in hits if c.effect is _FORBID]
        refers = [c for c in hits if c.effect is _REFER]
        reviews = [c for c in hits if c.effect is _REVIEW]
        contributing: list[_Compiled] = []
        reasons: list[str] = []
        obligations: set[str] = set()
        plan: FieldPlan | None = deny_plan
        queue: str | None = None
        route = basis = None
        if forbids:
            outcome = Outcome.DENY
            contributing = forbids
            reasons = ["forbidden"]
        elif refers and not reviews:
            outcome = Outcome.REFER
            contributing = refers
            queue = refers[0].rule.queue
            reasons = ["referred"]
        elif permit is not None or reviews:
            if permit is not None:
                contributing.append(permit)
                plan = self._plan(inp, permit, partial) or deny_plan
                route, basis = permit.route, permit.rule.legal_basis
                obligations |= set(permit.rule.obligations)
            contributing += reviews + refers + partial
            if partial:
                reasons.append("fields_forbidden")
            if reviews or triggers:
                outcome = Outcome.REVIEW
                queue = reviews[0].rule.queue if reviews else TRIGGER_QUEUE[triggers[0]]
                reasons += ["review_rule"] if reviews else []
                reasons += [t.value for t in triggers]
            else:
                outcome = (
                    Outcome.SHARE_MINIMISED if plan is None or plan.minimised else Outcome.SHARE
                )
                reasons.insert(0, "permitted")
            if permit is not None and (
                inp.maori_data or (plan is not None and "maori_data" in plan.released_classes)
            ):
                obligations.add(MAORI_OBLIGATION)
        else:
            outcome = Outcome.DENY
            reasons = ["no_permit"]
            if expired:
                contributing = expired
                reasons.append("rule_expired")
        if outcome in (Outcome.DENY, Outcome.REFER):
            plan = deny_plan
        for compiled in contributing:
            if compiled.rule.reason:
                reasons.append(compiled.rule.reason)
            if compiled.effect is _REVIEW or compiled.effect is _REFER:
                obligations |= set(compiled.rule.obligations)
        return Decision(
            outcome=outcome,
            event_type=inp.event_type,
            recipient=inp.recipient,
            purpose=inp.purpose,
            route=route,
            legal_basis=basis,
            rule_ids=tuple(dict.fromkeys(c.rule.id for c in contributing)),
            reason_codes=tuple(dict.fromkeys(reasons)),
            obligations=tuple(sorted(obligations)),
            law=tuple(sorted({ref for c in contributing for ref in c.rule.law})),
            queue=queue,
            field_actions=plan.actions if plan is not None else MappingProxyType({}),
            policy_hash=self.policy_hash,
            schema_version=version,
            plan=plan,
        )

    def _no_rules(self, inp: DecisionInput) -> Decision:
        key = (inp.kind, inp.event_type, inp.source, inp.recipient, inp.purpose, inp.schema_version)
        decision = self._plain.get(key)
        if decision is None:
            if inp.recipient not in self._agencies:
                reason = "unknown_recipient"
            elif inp.source not in self._agencies:
                reason = "unknown_source"
            elif inp.kind == "disclosure" and inp.event_type not in self._latest:
                reason = "unknown_event_type"
            else:
                reason = "no_permit"
            decision = self._deny(inp, (reason,), ())
            if len(self._plain) >= _CACHE_LIMIT * 8:
                self._plain.clear()
            self._plain[key] = decision
        return decision

    def _error(self, inp: DecisionInput, current: _Compiled | None) -> Decision:
        rule_ids = (current.rule.id,) if current is not None else ()
        try:
            return self._deny(inp, ("evaluation_error",), rule_ids, errors=rule_ids or ("engine",))
        except Exception:  # the input itself is unusable: still answer, still deny
            return Decision(
                outcome=Outcome.DENY,
                event_type=str(getattr(inp, "event_type", "")),
                recipient=str(getattr(inp, "recipient", "")),
                purpose=str(getattr(inp, "purpose", "")),
                route=None,
                legal_basis=None,
                rule_ids=rule_ids,
                reason_codes=("evaluation_error",),
                obligations=(),
                law=(),
                queue=None,
                field_actions=MappingProxyType({}),
                policy_hash=self.policy_hash,
                errors=rule_ids or ("engine",),
            )

    def _deny(
        self,
        inp: DecisionInput,
        reasons: tuple[str, ...],
        rule_ids: tuple[str, ...],
        errors: tuple[str, ...] = (),
    ) -> Decision:
        version = self._version(inp)
        plan = self._drop_all.get((inp.event_type, version or 0))
        return Decision(
            outcome=Outcome.DENY,
            event_type=inp.event_type,
            recipient=inp.recipient,
            purpose=inp.purpose,
            route=None,
            legal_basis=None,
            rule_ids=rule_ids,
            reason_codes=reasons,
            obligations=(),
            law=(),
            queue=None,
            field_actions=plan.actions if plan is not None else MappingProxyType({}),
            policy_hash=self.policy_hash,
            schema_version=version,
            plan=plan,
            errors=errors,
        )

    # -- explain -------------------------------------------------------------------------------

    def trace(self, inp: DecisionInput) -> list[RuleTrace]:
        """How every rule that could apply to this (event, source, recipient) fared."""
        key = (inp.kind, inp.event_type, inp.source, inp.recipient)
        table = self._index.get(key, _UNBUILT)
        if table is _UNBUILT:
            table = self._locate(key)
        if table is None:
            return []
        bucket = table.bucket(inp.purpose)
        out = []
        entries = [(c, False) for c in (*bucket.forbids, *bucket.reviews)] + list(bucket.permits)
        for compiled, unsure in sorted(entries, key=lambda pair: pair[0].index):
            if not compiled.check(inp):
                result = "no match"
            elif not compiled.active(inp):
                result = "inactive"
            elif unsure:
                result = "unconfirmed status"
            else:
                result = "matched"
            out.append(RuleTrace(compiled.rule.id, compiled.rule.effect, result))
        return out


def grounds_paths(schema: Schema) -> tuple[str, ...]:
    """The leaves of ``schema`` that carry the discloser's grounds (LAW.md FVA-03): the
    header's sharing justification and accountable role, and a request's own."""
    paths: tuple[str, ...] = GROUNDS_FIELDS
    if schema.short_name == "InformationRequest":
        paths += REQUEST_GROUNDS_FIELDS
    return tuple(path for path in paths if path in _leaf_paths(schema))


@functools.cache
def _leaf_paths(schema: Schema) -> frozenset[str]:
    return frozenset(info.path for info in leaves(schema))


def _with_grounds(
    plan: FieldPlan,
    schema: Schema,
    fields: tuple[tuple[str, str], ...],
    classes: tuple[tuple[str, str], ...],
    rule_id: str,
    route: str | None,
) -> FieldPlan:
    """``plan`` keeping the discloser's grounds (LAW.md FVA-03), whatever the rule says.

    A rule on a grounds route cannot drop, mask or pseudonymise them: its own entries for these
    paths (or a class that would reach them) are overridden, and ``explain`` names the route.
    """
    paths = grounds_paths(schema)
    if all(plan.actions[path] == "keep" for path in paths):
        return plan
    kept = compile_plan(schema, (*fields, *((path, "keep") for path in paths)), classes, rule_id)
    sources = dict(kept.sources)
    for path in paths:
        sources[path] = f"route {route} (FVA-03: the discloser's grounds travel)"
    return dataclasses.replace(kept, sources=MappingProxyType(sources))


def compile_policy(policy: PolicySet) -> Engine:
    """Compile ``policy`` once into an :class:`Engine`.

    Compiling allocates many small, long-lived objects (index entries, closures, plans), which
    would trigger repeated full collections; the cyclic collector is paused meanwhile (they
    form no garbage cycles) and restored after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return Engine(policy)
    finally:
        if enabled:
            gc.enable()


def apply_field_plan(
    record: Mapping[str, Any], decision: Decision, pseudonymiser: Pseudonymiser
) -> dict[str, Any]:
    """The minimised record ``decision.recipient`` may receive: released fields only.

    Dropped fields are absent (not null), so a field no rule names cannot leak by default.
    ``deny`` and ``refer`` give an empty record; ``review`` gives what a person would be asked
    to approve. Pseudonyms are keyed to the recipient. The record is JSON-ready: dates, times
    and UUIDs are text (:func:`~broker.policy.json_value`), as the broker writes them.
    """
    if decision.plan is None or decision.outcome in (Outcome.DENY, Outcome.REFER):
        return {}
    return decision.plan.project(record, pseudonymiser.transforms(decision.recipient))

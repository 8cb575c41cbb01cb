"""The usage gate's sweep across runs: what a continuation carries from one run to the next. Pure data.

A sweep is one pass over the region's optional instances. When a Lambda run stops for its time budget with work left,
the run saves the sweep (the stack's sweep bucket) and schedules the next run, which carries on from it:
- `undecided`: optional instances whose evidence has not been read yet (their facts from the first run's listing);
  evidence is read in chunks just before the plans it yields are carried out, so it is read once per sweep;
- `to_enforce` / `to_prepare`: plans decided but not carried out yet, each with the moment it was decided (a plan
  older than PLAN_MAX_AGE is decided again on fresh evidence: the instance may have called IMDSv1 since);
- `findings`: everything reported so far; the sweep's one report, at the end, holds them all;
- `totals`: the counters the report's totals are made of; the pacer's state; unexpected errors, raised at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan, PreparePlan
from imds_enforcer.domain.report import Finding

STATE_VERSION: Literal[1] = 1
PLAN_MAX_AGE = timedelta(minutes=30)


class FactsRecord(BaseModel):
    """InstanceFacts, as JSON."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    state: str
    http_tokens: str
    hop_limit: int
    http_endpoint: str
    tags: dict[str, str] = Field(default_factory=dict)
    launch_time: datetime | None = None
    first_launch_time: datetime | None = None
    image_id: str = ""
    image_name: str = ""

    @classmethod
    def of(cls, facts: InstanceFacts) -> FactsRecord:
        return cls(
            instance_id=facts.instance_id,
            state=facts.state,
            http_tokens=facts.http_tokens,
            hop_limit=facts.hop_limit,
            http_endpoint=facts.http_endpoint,
            tags=dict(facts.tags),
            launch_time=facts.launch_time,
            first_launch_time=facts.first_launch_time,
            image_id=facts.image_id,
            image_name=facts.image_name,
        )

    def facts(self) -> InstanceFacts:
        return InstanceFacts(**self.model_dump())


class PlanRecord(BaseModel):
    """A ModifyPlan (`finding` None) or a PreparePlan (its `prepared` finding), with when it was decided."""

    model_config = ConfigDict(frozen=True)

    instance: FactsRecord
    decided_at: datetime
    hop_limit: int | None = None
    container_reason: str | None = None
    why: str = ""
    exempt_tag_key: str = ""
    finding: Finding | None = None

    @classmethod
    def of_modify(cls, plan: ModifyPlan, *, decided_at: datetime) -> PlanRecord:
        return cls(
            instance=FactsRecord.of(plan.instance),
            decided_at=decided_at,
            hop_limit=plan.hop_limit,
            container_reason=plan.container_reason,
            why=plan.why,
            exempt_tag_key=plan.exempt_tag_key,
        )

    @classmethod
    def of_prepare(cls, plan: PreparePlan, *, decided_at: datetime) -> PlanRecord:
        return cls(
            instance=FactsRecord.of(plan.instance),
            decided_at=decided_at,
            exempt_tag_key=plan.exempt_tag_key,
            finding=plan.finding,
        )

    def modify_plan(self) -> ModifyPlan:
        return ModifyPlan(
            instance=self.instance.facts(),
            hop_limit=self.hop_limit,
            container_reason=self.container_reason,
            why=self.why,
            exempt_tag_key=self.exempt_tag_key,
        )

    def prepare_plan(self) -> PreparePlan:
        assert self.finding is not None, "a preparation carries its finding"
        return PreparePlan(instance=self.instance.facts(), finding=self.finding, exempt_tag_key=self.exempt_tag_key)

    def stale_at(self, now: datetime) -> bool:
        return now - self.decided_at > PLAN_MAX_AGE


class PacerRecord(BaseModel):
    rate: float
    tokens: float
    at: float  # epoch seconds


class SweepState(BaseModel):
    """One sweep in progress, as the sweep bucket holds it between runs."""

    version: Literal[1] = STATE_VERSION
    sweep_id: str
    started_at: datetime
    source_event_id: str | None = None
    mode: str
    runs: int = 0  # runs done so far
    continuations: int = 0  # runs started by the continuation schedule
    undecided: list[FactsRecord] = Field(default_factory=list)
    to_enforce: list[PlanRecord] = Field(default_factory=list)
    to_prepare: list[PlanRecord] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    totals: dict[str, int] = Field(default_factory=dict)
    unexpected: list[str] = Field(default_factory=list)
    pacer: PacerRecord | None = None
    # For the account default at the end: a container host among the instances the first run saw ("" if none), the
    # optional instances without the exemption tag at the listing, and those tagged exempt since.
    container_host_seen: str = ""
    open_candidates: int = 0
    exempt_since: int = 0

    @property
    def next_run(self) -> int:
        return self.runs + 1

    @property
    def work_left(self) -> bool:
        return bool(self.undecided or self.to_enforce or self.to_prepare)

    def add(self, counters: dict[str, int]) -> None:
        for name, value in counters.items():
            self.totals[name] = self.totals.get(name, 0) + value


def stale_plans_undecided(state: SweepState, now: datetime) -> int:
    """Plans decided more than PLAN_MAX_AGE ago go back to `undecided` (their evidence is read again before any
    change: an instance may have called IMDSv1 since). Returns how many."""
    stale = [plan for plan in (*state.to_enforce, *state.to_prepare) if plan.stale_at(now)]
    if not stale:
        return 0
    state.to_enforce = [plan for plan in state.to_enforce if not plan.stale_at(now)]
    state.to_prepare = [plan for plan in state.to_prepare if not plan.stale_at(now)]
    state.undecided = [*(plan.instance for plan in stale), *state.undecided]
    return len(stale)


def records(instances: Iterable[InstanceFacts]) -> list[FactsRecord]:
    return [FactsRecord.of(facts) for facts in instances]

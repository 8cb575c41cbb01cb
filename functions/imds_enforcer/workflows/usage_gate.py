"""The usage gate: a scheduled sweep of the region that switches instances to IMDSv2 on evidence.

A sweep, in order:
1. list the instances whose tokens are optional (server-side filter, 1000 a page) and the ones the service
   enforced within WATCH_DAYS (tag `imdsv2-enforcer:enforced-at`, any tokens value); look up their AMIs' names
   (container hosts are recognised by AMI family as well as by tags);
2. fetch `MetadataNoTokenRejected` for the watched ones, and report (and, opt-in, roll back) the enforced instances
   that reject IMDSv1 calls (workflows/rejection_watch), before anything new is switched;
3. fetch `MetadataNoToken` and the running reference (`CPUUtilization`) of the optional ones in batched GetMetricData
   calls (500 queries a call), decide each one (usage.gate_decision) and, in fix mode, enforce the ready ones and
   prepare the container hosts that still call IMDSv1 at hop limit 1 (hop limit 2, tokens left optional): paced to
   EC2's limit with AIMD (workflows/pacing), each paced batch re-checked on the live instances just before its
   modifies (workflows/enforcement), stopping when the Lambda's time budget runs low;
4. when the region is clean, set the account default (opt-in), with hop limit 2 when container hosts run here;
5. check where new instances come from (launch templates, launch configurations, own AMIs: launch_source_sweep),
   unless the time budget is already low (totals["source_checks_skipped"] says so);
6. publish one report (trigger `gate`) in which every optional instance appears, with the sweep's totals.

Continuation: when a run stops for its time budget with work left (and the stack configured it), the run saves the
sweep (domain/sweep.py: undecided instances, plans not carried out, findings so far, counters, the pacer's state) to
the sweep bucket and creates an EventBridge Scheduler one-time schedule that invokes the gate again at once with a
continuation marker (the sweep's id and the next run's number). That run carries on from the saved sweep; the last
run publishes the one report of the sweep and deletes the saved state. Evidence is read in chunks of 250 instances
(one full GetMetricData call) just before the plans it yields are carried out, so each instance's evidence is read
once per sweep and is minutes old, not hours, when its instance is switched; a carried plan older than
sweep.PLAN_MAX_AGE is decided again. The last run a sweep may have (MAX_CONTINUATIONS reached, or no continuation
configured) reads all the remaining evidence first, so every instance is decided and reported.

Runs never overlap: the function's reserved concurrency is 1, and a run that finds a sweep in progress (a schedule
that fired while a sweep was still going) continues that sweep instead of starting a second one; a continuation
whose run was already done (a duplicate delivery) or whose sweep is over changes nothing.

Deferred instances (fix mode, ready, but the sweep's last run ran out of time before their turn) are reported as
`ready` with details `{"deferred": "true"}`: `ready` already means "would be enforced, and was not", which is exactly
their state, and the contract's list of actions stays closed. The reason says why, and totals["deferred"] counts them.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from imds_enforcer.aws import ec2, scheduler, sweep_store
from imds_enforcer.aws.cloudwatch import MAX_QUERIES_PER_CALL
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.events import GateTrigger, Ignored, continuation_event, read_gate_event
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import (
    CONTAINER_HOP_LIMIT,
    CONTAINER_HOST_TAG_KEYS,
    ModifyPlan,
    PreparePlan,
    instance_container_reason,
    is_exempt,
)
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, CallerAnalysis, Settings
from imds_enforcer.domain.sweep import (
    FactsRecord,
    PacerRecord,
    PlanRecord,
    SweepState,
    records,
    stale_plans_undecided,
)
from imds_enforcer.domain.usage import (
    MetadataUsage,
    deferred_finding,
    gate_decision,
    rejected_calls,
    under_watch,
)
from imds_enforcer.observability import logger
from imds_enforcer.workflows import (
    caller_analysis,
    door_sweep,
    evidence,
    exemptions,
    launch_source_sweep,
    rejection_watch,
    switch_records,
)
from imds_enforcer.workflows.enforcement import EnforcementOutcome, deferred_preparation_finding, enforce, prepare
from imds_enforcer.workflows.pacing import Clock, Pacer, PacerSnapshot, SystemClock

ENFORCED_BY = "usage_gate"
TRIGGER = "gate"
ACCOUNT_RESOURCE = "account"
# One full GetMetricData call: two queries (MetadataNoToken, the running reference) per instance.
EVIDENCE_CHUNK = MAX_QUERIES_PER_CALL // 2
# The continuation's at() time: a moment in the future (EventBridge Scheduler refuses one in the past), fired within
# the minute (its documented precision is 60 s).
CONTINUATION_DELAY = timedelta(seconds=5)
# The order the report's totals are written in (every sweep writes each of them).
TOTALS = (
    "instances_scanned",
    "optional_remaining",
    "enforced",
    "prepared",
    "deferred",
    "watched",
    "rejected",
    "rolled_back",
    "already_required",
    "gone",
    "throttles",
    "modify_wait_seconds",
    "source_checks_skipped",
    "reported_late",
    "switched_by_another_run",
    "runs",
    "continuations",
    "sweep_seconds",
)


@dataclass
class GateOutcome:
    status: str  # "ignored", "processed" (the sweep's report is out) or "continued" (the next run is scheduled)
    reason: str = ""
    findings: list[Finding] = field(default_factory=list)  # this run's own findings (the metrics count them)
    totals: dict[str, int] = field(default_factory=dict)  # the sweep's, so far
    message_ids: list[str] = field(default_factory=list)
    report: Report | None = None
    sweep_id: str | None = None
    run: int = 0
    throttles: int = 0  # this run's

    @property
    def counts(self) -> dict[str, int]:
        return Report(account="", region="", trigger=TRIGGER, mode="", findings=self.findings).counts

    def summary(self) -> dict[str, object]:
        # Counts, not findings: a 10,000-instance run would exceed Lambda's 6 MB response.
        return {
            "status": self.status,
            "reason": self.reason,
            "sweep_id": self.sweep_id,
            "run": self.run,
            "totals": self.totals,
            "counts": self.counts,
            "published": len(self.message_ids),
        }


@dataclass
class _Run:
    settings: Settings
    now: datetime
    pacer: Pacer
    clock: Clock
    started: float  # the clock's monotonic reading when the run began
    recorder: switch_records.SwitchRecorder | None = None  # this run's switches, in the state table
    findings: list[Finding] = field(default_factory=list)  # this run's
    unexpected: list[str] = field(default_factory=list)

    def wall(self) -> datetime:
        return self.now + timedelta(seconds=self.clock.monotonic() - self.started)


@dataclass
class _Work:
    """A sweep's queues while a run works on them (deques; the saved SweepState holds lists)."""

    undecided: deque[FactsRecord]
    to_enforce: deque[PlanRecord]
    to_prepare: deque[PlanRecord]

    @classmethod
    def of(cls, state: SweepState) -> _Work:
        return cls(deque(state.undecided), deque(state.to_enforce), deque(state.to_prepare))

    def into(self, state: SweepState) -> None:
        state.undecided = list(self.undecided)
        state.to_enforce = list(self.to_enforce)
        state.to_prepare = list(self.to_prepare)


def run_gate(
    raw_event: object,
    *,
    settings: Settings,
    deployment: Deployment,
    remaining_ms: Callable[[], int] | None = None,
    now: datetime | None = None,
    publish: bool = True,
    function_arn: str = "",
    clock: Clock | None = None,
) -> GateOutcome:
    """One run of a sweep. `publish=False` (the CLI) returns the report instead of sending it to the topic (and
    never continues: the whole sweep is one run). `function_arn` is the gate's own (the continuation invokes it)."""
    trigger = read_gate_event(raw_event, account=deployment.account)
    if isinstance(trigger, Ignored):
        logger.warning("event ignored", extra={"reason": trigger.reason, "event_id": trigger.event_id})
        return GateOutcome(status="ignored", reason=trigger.reason)
    logger.info("gate run", extra={"trigger": trigger.kind, "event_id": trigger.event_id, "run": trigger.run})

    clock = clock or SystemClock()
    now = now or clock.now()
    # The central exemption list, when configured, replaces the tag for this run (unreadable: nothing changes).
    settings = exemptions.with_central_exemptions(settings, now=now)
    run = _Run(
        settings=settings,
        now=now,
        pacer=Pacer(
            burst=settings.MODIFY_BURST,
            rate_per_second=settings.MODIFY_RATE_PER_SECOND,
            clock=clock.monotonic,
            sleep=clock.sleep,
        ),
        clock=clock,
        started=clock.monotonic(),
        # Before anything is read: a switch another run records after this moment is one this run would only repeat.
        recorder=switch_records.SwitchRecorder.start(settings, enforced_by=ENFORCED_BY, event_id=trigger.event_id),
    )
    margin_ms = settings.DEADLINE_MARGIN_SECONDS * 1000

    def should_stop() -> bool:
        return remaining_ms is not None and remaining_ms() < margin_ms

    continuing = settings.continuation_enabled and publish and bool(function_arn)
    if trigger.kind == "continuation" and not continuing:
        reason = "a continuation, but this deployment has no continuation configured"
        logger.warning("event ignored", extra={"reason": reason, "event_id": trigger.event_id})
        return GateOutcome(status="ignored", reason=reason)
    state = _load_sweep(settings) if continuing else None
    if trigger.kind == "continuation":
        not_now = _continuation_mismatch(trigger, state, run, deployment, function_arn)
        if not_now is not None:
            return not_now
    elif state is not None:
        # A schedule (or a person) while a sweep is going on: carry on with it, never start a second one.
        logger.info("a sweep is in progress: this run continues it", extra={"sweep_id": state.sweep_id})

    if state is None:
        state = _start_sweep(trigger, run, deployment, eager=not continuing or settings.MAX_CONTINUATIONS == 0)
    else:
        _resume(state, run)
    this_run = state.runs + 1
    last_allowed = not continuing or this_run - 1 >= settings.MAX_CONTINUATIONS
    work = _Work.of(state)
    if last_allowed and work.undecided:
        # No run after this one: decide everything now, so every instance is in the report.
        _decide_all(work, state, run, at=run.now if this_run == 1 else run.wall())
    _instances(work, state, run, should_stop, lazy=not last_allowed)
    work.into(state)
    state.runs = this_run
    state.continuations += trigger.kind == "continuation"
    state.add({"throttles": run.pacer.throttles, "modify_wait_seconds": round(run.pacer.waited_seconds)})

    if state.work_left and not last_allowed:
        continued = _continue(state, run, deployment, function_arn)
        if continued is not None:
            return continued
    return _finish(state, run, deployment, should_stop, publish, continuing)


def _load_sweep(settings: Settings) -> SweepState | None:
    """The sweep in progress, if any. One that cannot be read (a deploy changed its shape mid-sweep) is dropped with
    an error in the log: its instances are simply swept again from scratch."""
    try:
        text = sweep_store.load(settings.SWEEP_STATE_BUCKET)
    except AwsError as error:
        # Without the state no run may start work (it could start a second sweep over a running one): fail loudly.
        logger.error("sweep state unreadable", extra={"code": error.code})
        raise
    if text is None:
        return None
    try:
        return SweepState.model_validate_json(text)
    except ValidationError as error:
        logger.error("sweep state invalid: starting afresh", extra={"error": str(error)[:500]})
        return None


def _continuation_mismatch(
    trigger: GateTrigger, state: SweepState | None, run: _Run, deployment: Deployment, function_arn: str
) -> GateOutcome | None:
    """Whether this continuation is the run the sweep in progress expects; if not, the outcome (nothing done)."""
    if state is None or state.sweep_id != trigger.sweep_id:
        reason = f"continuation of sweep {trigger.sweep_id}, which is over (its report is out)"
    elif trigger.run == state.next_run:
        return None
    elif trigger.run == state.runs:
        # Delivered again after its run was done (asynchronous delivery is at-least-once, or the run was retried):
        # make sure the run it scheduled exists (it may have stopped in between), and do nothing else.
        reason = f"run {trigger.run} of sweep {state.sweep_id} is already done"
        _schedule(state, run, deployment, function_arn)
    else:
        reason = f"run {trigger.run} of sweep {state.sweep_id} is not the next one ({state.next_run})"
    logger.info("continuation ignored", extra={"reason": reason, "event_id": trigger.event_id})
    return GateOutcome(status="ignored", reason=reason, sweep_id=trigger.sweep_id, run=trigger.run or 0)


def _start_sweep(trigger: GateTrigger, run: _Run, deployment: Deployment, *, eager: bool) -> SweepState:
    """The first run's listing and the watch after the switch; the optional instances start undecided (or, eager:
    decided at once on evidence fetched with the watch's, in the same batched calls)."""
    settings = run.settings
    optional = evidence.with_image_names(list(ec2.iter_instances_by_tokens("optional")))
    watched = [
        facts for facts in ec2.iter_instances_tagged(ENFORCED_AT_TAG) if under_watch(facts, settings, now=run.now)
    ]
    # Switches no report carried yet (reported now) and untagged ones (tagged again, and watched from the record).
    open_switches = switch_records.reconcile(run.recorder, now=run.now)
    watched += [
        facts
        for facts in switch_records.watch_untagged(open_switches.untagged, watched)
        if under_watch(facts, settings, now=run.now)
    ]
    usage = evidence.fetch_usage(optional if eager else [], watched, settings=settings, now=run.now)
    watch = rejection_watch.watch(
        watched,
        {facts.instance_id: rejected_calls(facts, usage[facts.instance_id]) for facts in watched},
        settings=settings,
        now=run.now,
        before_modify=run.pacer.acquire,
    )
    first = [*exemptions.expired_exemption_findings(settings), *open_switches.findings, *watch.findings]
    run.findings.extend(first)
    run.unexpected.extend(watch.unexpected)
    state = SweepState(
        sweep_id=f"{run.now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        started_at=run.now,
        source_event_id=trigger.event_id,
        mode=settings.ENFORCEMENT_MODE.value,
        findings=first,
        unexpected=list(watch.unexpected),
        totals={
            "instances_scanned": len(optional),
            "watched": len(watched),
            "rejected": watch.rejected,
            "rolled_back": watch.rolled_back,
            "reported_late": len(open_switches.findings),
        },
        open_candidates=sum(1 for facts in optional if not is_exempt(facts, settings)),
        container_host_seen=_container_host_seen([*optional, *watched], settings),
    )
    if eager:
        findings, state.to_enforce, state.to_prepare = _decide(optional, usage, run, at=run.now)
        state.findings.extend(findings)
    else:
        state.undecided = records(optional)
    return state


def _resume(state: SweepState, run: _Run) -> None:
    if state.pacer is not None:
        run.pacer.resume(PacerSnapshot(**state.pacer.model_dump()), wall_now=run.now.timestamp())
    again = stale_plans_undecided(state, run.now)
    if again:
        logger.info("plans decided too long ago are decided again", extra={"plans": again})
    logger.info(
        "sweep continues",
        extra={
            "sweep_id": state.sweep_id,
            "run": state.next_run,
            "undecided": len(state.undecided),
            "to_enforce": len(state.to_enforce),
            "to_prepare": len(state.to_prepare),
        },
    )


def _decide(
    instances: list[InstanceFacts], usage: Mapping[str, MetadataUsage], run: _Run, *, at: datetime
) -> tuple[list[Finding], list[PlanRecord], list[PlanRecord]]:
    """Decide each instance on its evidence: findings (also the run's), plans and preparations."""
    findings: list[Finding] = []
    plans: list[PlanRecord] = []
    preparations: list[PlanRecord] = []
    for facts in instances:
        decision = gate_decision(facts, usage[facts.instance_id], run.settings, now=at)
        if isinstance(decision, Finding):
            findings.append(decision)
        elif isinstance(decision, ModifyPlan):
            plans.append(PlanRecord.of_modify(decision, decided_at=at))
        elif isinstance(decision, PreparePlan):
            preparations.append(PlanRecord.of_prepare(decision, decided_at=at))
        else:
            logger.info("nothing to do", extra={"instance_id": facts.instance_id, "tokens": facts.http_tokens})
    run.findings.extend(findings)
    return findings, plans, preparations


def _decide_chunk(work: _Work, state: SweepState, run: _Run) -> None:
    """Read the evidence of the next EVIDENCE_CHUNK undecided instances (one GetMetricData call) and decide them.
    If CloudWatch fails, those instances are reported failed (never decided blind), and the sweep goes on."""
    chunk = [work.undecided.popleft().facts() for _ in range(min(EVIDENCE_CHUNK, len(work.undecided)))]
    at = run.wall()
    try:
        usage = evidence.fetch_usage(chunk, [], settings=run.settings, now=at)
    except AwsError as error:
        failed = [
            error.finding(facts.instance_id, "GetMetricData (evidence not read; nothing changed)") for facts in chunk
        ]
        state.findings.extend(failed)
        run.findings.extend(failed)
        if not error.expected:
            run.unexpected.append(f"{error.operation}: {error.code}")
        return
    findings, plans, preparations = _decide(chunk, usage, run, at=at)
    state.findings.extend(findings)
    work.to_enforce.extend(plans)
    work.to_prepare.extend(preparations)


def _decide_all(work: _Work, state: SweepState, run: _Run, *, at: datetime) -> None:
    """Decide every undecided instance now (the sweep's last run: nobody comes after it)."""
    instances = [record.facts() for record in work.undecided]
    work.undecided.clear()
    usage = evidence.fetch_usage(instances, [], settings=run.settings, now=at)
    findings, plans, preparations = _decide(instances, usage, run, at=at)
    state.findings.extend(findings)
    work.to_enforce.extend(plans)
    work.to_prepare.extend(preparations)


def _instances(work: _Work, state: SweepState, run: _Run, should_stop: Callable[[], bool], *, lazy: bool) -> None:
    """This run's share of the instance work: decide (lazily, chunk by chunk, when `lazy`), enforce, prepare."""
    if not run.settings.fix:
        while work.undecided and not should_stop():
            _decide_chunk(work, state, run)
        return
    taken: dict[str, PlanRecord] = {}

    def plans() -> Iterator[ModifyPlan]:
        while True:
            while work.to_enforce:
                record = work.to_enforce.popleft()
                taken[record.instance.instance_id] = record
                yield record.modify_plan()
            if not (lazy and work.undecided) or should_stop():
                return
            _decide_chunk(work, state, run)

    enforced = enforce(
        plans(),
        enforced_by=ENFORCED_BY,
        pacer=run.pacer,
        now=run.now,
        should_stop=should_stop,
        adaptive=True,
        facts_read_now=False,
        recorder=run.recorder,
        settings=run.settings,
        event_id=state.source_event_id,
    )
    _tally(enforced, state, run, counter="enforced")
    work.to_enforce.extendleft(reversed([taken[plan.instance_id] for plan in enforced.deferred_plans]))
    if work.to_enforce or work.undecided:
        return  # the time budget (or EC2's throttling) stopped the enforcements: container hosts wait their turn
    preparing: dict[str, PlanRecord] = {}

    def preparations() -> Iterator[PreparePlan]:
        while work.to_prepare:
            record = work.to_prepare.popleft()
            preparing[record.instance.instance_id] = record
            yield record.prepare_plan()

    prepared = prepare(
        preparations(),
        pacer=run.pacer,
        now=run.now,
        should_stop=should_stop,
        adaptive=True,
        facts_read_now=False,
        settings=run.settings,
    )
    _tally(prepared, state, run, counter="prepared")
    work.to_prepare.extendleft(reversed([preparing[plan.instance_id] for plan in prepared.deferred_preparations]))


def _tally(outcome: EnforcementOutcome, state: SweepState, run: _Run, *, counter: str) -> None:
    state.findings.extend(outcome.findings)
    run.findings.extend(outcome.findings)
    run.unexpected.extend(outcome.unexpected_errors)
    state.unexpected.extend(outcome.unexpected_errors)
    state.add(
        {
            counter: len(outcome.enforced),
            "already_required": len(outcome.already_done),
            "gone": len(outcome.gone),
            "switched_by_another_run": len(outcome.switched_elsewhere),
        }
    )
    state.exempt_since += sum(1 for finding in outcome.findings if finding.action is Action.EXEMPT)


def _continue(state: SweepState, run: _Run, deployment: Deployment, function_arn: str) -> GateOutcome | None:
    """Save the sweep and schedule its next run. None when that fails: the caller then ends the sweep here (its
    report goes out with the rest deferred), rather than leave findings nobody will publish."""
    snapshot = run.pacer.snapshot(wall_now=run.wall().timestamp())
    state.pacer = PacerRecord(rate=snapshot.rate, tokens=snapshot.tokens, at=snapshot.at)
    try:
        size = sweep_store.save(run.settings.SWEEP_STATE_BUCKET, state.model_dump_json())
        _schedule(state, run, deployment, function_arn)
    except AwsError as error:
        logger.error("the sweep cannot continue: it ends with this run", extra={"code": error.code})
        state.unexpected.append(f"{error.operation} (continuation): {error.code}")
        return None
    if run.recorder is not None:
        # This run's switches stay open (the sweep's report, at its end, carries them), but their tags are on record.
        run.recorder.checkpoint()
    totals = _totals(state, run)
    logger.info(
        "sweep continues in a new run",
        extra={"sweep_id": state.sweep_id, "next_run": state.next_run, "state_bytes": size, "totals": totals},
    )
    return GateOutcome(
        status="continued",
        findings=run.findings,
        totals=totals,
        sweep_id=state.sweep_id,
        run=state.runs,
        throttles=run.pacer.throttles,
    )


def _schedule(state: SweepState, run: _Run, deployment: Deployment, function_arn: str) -> None:
    at = run.wall() + CONTINUATION_DELAY
    event = continuation_event(
        account=deployment.account, region=deployment.region, sweep_id=state.sweep_id, run=state.next_run, at=at
    )
    created = scheduler.schedule_once(
        group=run.settings.CONTINUATION_SCHEDULE_GROUP,
        name=f"gate-{state.sweep_id}-run-{state.next_run}",
        at=at,
        target_arn=function_arn,
        role_arn=run.settings.CONTINUATION_ROLE_ARN,
        payload=json.dumps(event),
        dead_letter_arn=run.settings.CONTINUATION_DEAD_LETTER_ARN,
    )
    logger.info("continuation scheduled" if created else "continuation already scheduled", extra={"at": str(at)})


def _totals(state: SweepState, run: _Run) -> dict[str, int]:
    totals = dict.fromkeys(TOTALS, 0)
    totals.update(state.totals)
    # Of the optional instances the sweep listed: those it did not find required (by itself or by another run since)
    # nor gone, and the instances it set back to optional.
    done = totals["enforced"] + totals["already_required"] + totals["switched_by_another_run"] + totals["gone"]
    totals["optional_remaining"] = totals["instances_scanned"] - done + totals["rolled_back"]
    totals["runs"] = state.runs
    totals["continuations"] = state.continuations
    totals["sweep_seconds"] = max(0, round((run.wall() - state.started_at).total_seconds()))
    return totals


def _finish(
    state: SweepState,
    run: _Run,
    deployment: Deployment,
    should_stop: Callable[[], bool],
    publish: bool,
    continuing: bool,
) -> GateOutcome:
    """The sweep's last run: what is left is deferred to the next scheduled sweep, the region-wide steps, the one
    report, then the saved state goes."""
    leftovers: list[Finding] = [deferred_finding(record.modify_plan()) for record in state.to_enforce]
    leftovers += [deferred_preparation_finding(record.prepare_plan()) for record in state.to_prepare]
    # Only when the sweep could not continue (its state or schedule could not be written): instances whose evidence
    # was never read. Not proven quiet, so reported as such; the next scheduled sweep decides them.
    leftovers += [_not_decided(record.facts()) for record in state.undecided]
    state.findings.extend(leftovers)
    run.findings.extend(leftovers)
    state.add({"deferred": len(state.to_enforce) + len(state.undecided)})
    state.to_enforce, state.to_prepare, state.undecided = [], [], []

    if run.settings.SET_ACCOUNT_DEFAULT:
        left_open = (
            state.open_candidates
            - state.totals.get("enforced", 0)
            - state.totals.get("already_required", 0)
            - state.totals.get("gone", 0)
            - state.totals.get("switched_by_another_run", 0)
            - state.exempt_since
        )
        before = len(run.findings)
        _account_default(run, deployment, left_open=left_open, rejected=state.totals.get("rejected", 0), state=state)
        state.findings.extend(run.findings[before:])
    before = len(run.findings)
    state.add({"source_checks_skipped": _check_sources(run, should_stop)})
    state.findings.extend(run.findings[before:])
    _attach_callers(state, run)
    interrupted = switch_records.claim_unreported(
        run.recorder, reported=(f.resource_id for f in state.findings if f.action is Action.ENFORCED)
    )
    state.findings.extend(interrupted)
    run.findings.extend(interrupted)
    state.add({"reported_late": len(interrupted)})
    state.unexpected.extend(error for error in run.unexpected if error not in state.unexpected)

    totals = _totals(state, run)
    report = Report(
        account=deployment.account,
        region=deployment.region,
        trigger=TRIGGER,
        mode=run.settings.ENFORCEMENT_MODE.value,
        source_event_id=state.source_event_id,
        sweep_id=state.sweep_id,
        totals=totals,
        findings=state.findings,
    )
    logger.info("gate decided", extra={"sweep_id": state.sweep_id, "totals": totals, "counts": report.counts})
    # Settles the switch records of every run of the sweep whose `enforced` finding this report carries.
    message_ids = switch_records.publish_and_settle(
        report, settings=run.settings, recorder=run.recorder, publish=publish
    )
    if continuing:
        # After the report is out: had the publish failed, the next run would find the sweep and publish it then.
        # (A single-run sweep saved nothing, but a run whose continuation failed did.)
        try:
            sweep_store.delete(run.settings.SWEEP_STATE_BUCKET)
        except AwsError as error:
            state.unexpected.append(f"{error.operation} (the sweep's saved state): {error.code}")
    if state.unexpected:
        raise UnexpectedAwsError("; ".join(state.unexpected), report=report)
    return GateOutcome(
        status="processed",
        findings=run.findings,
        totals=totals,
        message_ids=message_ids,
        report=report,
        sweep_id=state.sweep_id,
        run=state.runs,
        throttles=run.pacer.throttles,
    )


SOURCE_CHECKS: tuple[tuple[str, Callable[[Settings], launch_source_sweep.SourceOutcome]], ...] = (
    ("launch templates", launch_source_sweep.sweep_launch_templates),
    ("launch configurations", launch_source_sweep.sweep_launch_configurations),
    ("images", launch_source_sweep.sweep_images),
    *door_sweep.DOOR_CHECKS,
)


def _check_sources(run: _Run, should_stop: Callable[[], bool]) -> int:
    """The launch-source checks, after the instances (which carry the evidence and come first); each one is
    skipped when the time budget is already low. Returns how many were skipped."""
    skipped = 0
    for name, check in SOURCE_CHECKS:
        if should_stop():
            logger.warning("time budget low: check left to the next run", extra={"check": name})
            skipped += 1
            continue
        outcome = check(run.settings)
        run.findings.extend(outcome.findings)
        run.unexpected.extend(outcome.unexpected_errors)
    return skipped


def _attach_callers(state: SweepState, run: _Run) -> None:
    """Opt-in: which processes make the blocked instances' IMDSv1 calls (annotates their findings in the sweep's
    report; never fails it). The blocked instances are read again here, at the sweep's end: the analysis' own tags on
    them say what was already sent."""
    if run.settings.CALLER_ANALYSIS is CallerAnalysis.OFF:
        return
    blocked = [f.resource_id for f in state.findings if f.action is Action.BLOCKED and f.resource_type == "instance"]
    if not blocked:
        return
    try:
        instances = ec2.describe_by_ids(blocked)
    except AwsError as error:
        logger.warning("caller analysis skipped: blocked instances unreadable", extra={"code": error.code})
        if not error.expected:
            run.unexpected.append(f"{error.operation} (caller analysis): {error.code}")
        return
    before = list(state.findings)
    callers = caller_analysis.attach_callers(before, instances, run.settings, now=run.wall())
    state.findings[:] = callers.findings
    # This run's own findings (what the CLI shows, what the metrics count) carry the same annotations.
    annotated = {id(old): new for old, new in zip(before, callers.findings, strict=True)}
    run.findings[:] = [annotated.get(id(finding), finding) for finding in run.findings]
    run.unexpected.extend(callers.unexpected_errors)
    state.add(callers.totals)


def _not_decided(facts: InstanceFacts) -> Finding:
    return Finding(
        resource_id=facts.instance_id,
        action=Action.INSUFFICIENT_DATA,
        reason="not decided in this sweep: its evidence was not read before the sweep had to stop (it could not "
        "continue); the next scheduled sweep decides it",
        details={"state": facts.state, "deferred": "true"},
    )


def _account(deployment: Deployment) -> dict[str, Any]:
    """Who an account-level finding is about."""
    return {"resource_type": ACCOUNT_RESOURCE, "resource_id": deployment.account}


def _account_default(run: _Run, deployment: Deployment, *, left_open: int, rejected: int, state: SweepState) -> None:
    """Require IMDSv2 for new launches once the region is clean: no optional instance left but exempt ones,
    and nothing rejected in the watch period. A default set by a declarative policy is reported, not fought.

    The hop limit follows the evidence: container hosts that launch later without their own metadata options would
    get hop limit 1 from the default, their pods' SDKs could not get tokens, and the launch would break them. So
    where container hosts run in the region (among the instances the sweep saw, or any live instance with a
    container-host tag), the default also gets hop limit 2."""
    if left_open or rejected:
        logger.info("account default not yet", extra={"optional_not_exempt": left_open, "rejected": rejected})
        return
    try:
        defaults: Mapping[str, Any] = ec2.instance_metadata_defaults()
    except AwsError as error:
        run.findings.append(error.finding(deployment.account, resource_type=ACCOUNT_RESOURCE))
        return
    tokens = defaults.get("HttpTokens", "no-preference")
    details = {
        "http_tokens": str(tokens),
        "http_tokens_enforced": str(defaults.get("HttpTokensEnforced", "disabled")),
        "managed_by": str(defaults.get("ManagedBy", "account")),
    }
    if tokens == "required":
        logger.info("account default already requires IMDSv2", extra=details)
        return
    hop_limit, hop_reason = _default_hop_limit(run, state.container_host_seen)
    if defaults.get("ManagedBy") == "declarative-policy":
        message = defaults.get("ManagedExceptionMessage")
        run.findings.append(
            Finding(
                **_account(deployment),
                action=Action.FLAGGED,
                reason=f"the region is clean, but the IMDS account default (HttpTokens {tokens}) is managed by a "
                "declarative policy: change it in the organization's policy" + (f" ({message})" if message else ""),
                details=details,
            )
        )
        return
    if not run.settings.fix:
        run.findings.append(
            Finding(
                **_account(deployment),
                action=Action.READY,
                reason=f"no instance accepts IMDSv1 but exempt ones: the account default (HttpTokens {tokens}) "
                f"would be set to required, {hop_reason} (flag mode, left unchanged)",
                details=details,
            )
        )
        return
    try:
        ec2.require_tokens_by_default(hop_limit=hop_limit)
    except AwsError as error:
        run.findings.append(error.finding(deployment.account, resource_type=ACCOUNT_RESOURCE))
        return
    run.findings.append(
        Finding(
            **_account(deployment),
            action=Action.ENFORCED,
            reason=f"no instance accepts IMDSv1 but exempt ones: account default HttpTokens set from {tokens} to "
            f"required for new launches, {hop_reason} (HttpTokensEnforced left as it is)",
            details={
                **details,
                "http_tokens": "required",
                "previous_http_tokens": str(tokens),
                "hop_limit": str(hop_limit) if hop_limit else "unchanged",
            },
        )
    )


def _container_host_seen(instances: list[InstanceFacts], settings: Settings) -> str:
    """The first container host among `instances`, in words for the report ("" when there is none)."""
    for facts in instances:
        reason = instance_container_reason(facts, settings)
        if reason:
            return f"{facts.instance_id}: {reason}"
    return ""


def _default_hop_limit(run: _Run, container_host_seen: str) -> tuple[int | None, str]:
    """The hop limit the account default gets (None: left as it is), and why, in words for the report."""
    if container_host_seen:
        return CONTAINER_HOP_LIMIT, (
            f"hop limit {CONTAINER_HOP_LIMIT} because container hosts run here ({container_host_seen})"
        )
    keys = [*CONTAINER_HOST_TAG_KEYS, *run.settings.CONTAINER_HOST_TAG_KEYS, "kubernetes.io/cluster/*"]
    try:
        tagged = ec2.any_instance_tagged(keys)
    except AwsError as error:
        # Unknown: the safe side for a later container host is 2 (one hop more for plain instances is harmless).
        return CONTAINER_HOP_LIMIT, f"hop limit {CONTAINER_HOP_LIMIT} (container hosts unknown: {error.code})"
    if tagged:
        return CONTAINER_HOP_LIMIT, f"hop limit {CONTAINER_HOP_LIMIT} because container hosts run here (tagged)"
    return None, "hop limit left as it is (no container host runs here)"

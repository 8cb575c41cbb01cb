"""Carry out ModifyPlans: paced modifies, one tag call for everything enforced, a finding for every instance.

Shared by the launch watch and the usage gate, so both follow the same rules (tokens required, hop limit never
lowered, who/when tags) and report the same way.

Before each paced batch of RECHECK_BATCH modifies, one DescribeInstances (instance-id filter) reads the live
instances again: a plan made from older facts (the gate's listing, minutes ago; a continuation's plan) is skipped when
its instance is gone, was exempted since (reported `exempt`) or already requires IMDSv2 (someone else switched it:
not reported again), and it never lowers a hop limit raised since. A batch of 50 is at most 10 s of modifies at
EC2's sustained rate. The first batch of a caller that has just read the instances itself (the launch watch) is not
read again.

After each successful modify, before anything else can fail, the switch is logged (one structured line) and
recorded in the state table (workflows/switch_records): the record is what a retry or the gate's next sweep reports
if this run's report never goes out, and what the watch after the switch reads if the tags could not be written. A
policy's refusal (UnauthorizedOperation: an SCP, the role's exemption condition) is reported, never raised: a retry
would get the same answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import TypeVar

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import (
    CONTAINER_HOP_LIMIT,
    ModifyPlan,
    PreparePlan,
    Recheck,
    exempt_finding,
    is_exempt,
    recheck_modify,
    recheck_prepare,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG, Settings
from imds_enforcer.domain.switches import untagged_finding
from imds_enforcer.observability import logger
from imds_enforcer.workflows.pacing import Pacer, is_throttle
from imds_enforcer.workflows.switch_records import SwitchRecorder, log_switch, tag_with_retry

__all__ = ["RECHECK_BATCH", "EnforcementOutcome", "Pacer", "deferred_preparation_finding", "enforce", "prepare"]

RECHECK_BATCH = 50

P = TypeVar("P", ModifyPlan, PreparePlan)


@dataclass
class EnforcementOutcome:
    findings: list[Finding] = field(default_factory=list)
    enforced: list[str] = field(default_factory=list)
    deferred: list[InstanceFacts] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    # Plans not carried out in this call, in order: the time budget ran out, or EC2 kept throttling (the pacer is
    # exhausted). The gate carries them to its continuation, or reports them `ready`, deferred.
    deferred_plans: list[ModifyPlan] = field(default_factory=list)
    deferred_preparations: list[PreparePlan] = field(default_factory=list)
    # Skipped on the live instance just before the modify (ids): nothing left to do there.
    already_done: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    rechecks: int = 0  # DescribeInstances calls made to re-check
    # Switched by another run after this one read them (our modify changed nothing): that run reports them.
    switched_elsewhere: list[str] = field(default_factory=list)


def enforce(
    plans: Iterable[ModifyPlan],
    *,
    enforced_by: str,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    reason_prefix: str = "",
    adaptive: bool = False,
    facts_read_now: bool = True,
    recorder: SwitchRecorder | None = None,
    settings: Settings | None = None,
    event_id: str | None = None,
) -> EnforcementOutcome:
    """Modify each planned instance; a failure on one never stops the others. Errors a retry can fix are collected
    so that the caller can raise after reporting (Lambda's retry and the failure destination then see them).

    `plans` may be lazy (the gate decides them chunk by chunk as they are taken); what is not taken stays with the
    caller. `adaptive` (the gate): modifies go through the paced client, a throttle slows the pacer down (AIMD) and
    the instance is tried again later in the run, never reported as a failure; otherwise (the launch watch) botocore's
    retries absorb throttles and one that outlasts them is a `failed` finding. `facts_read_now=False`: the plans'
    facts are not fresh, so the first batch is re-checked too. `recorder` (the state table) makes each switch durable
    and settles overlaps with other runs; `settings` decide exemptions on the live instance (the central list, when
    configured) and let a refused modify be told apart: an instance exempted since this run read it is `exempt`."""
    outcome = EnforcementOutcome()
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused: dict[str, AwsError] = {}

    def modify(plan: ModifyPlan) -> None:
        ec2.require_tokens(plan.instance_id, hop_limit=plan.hop_limit, paced=adaptive)

    changed = _paced(
        plans,
        recheck=lambda plan, live: recheck_modify(plan, live, settings),
        modify=modify,
        switched=lambda plan: _after_switch(plan, stamp, reason_prefix, enforced_by, recorder, event_id, outcome),
        failed=lambda plan, error: error.finding(plan.instance_id),
        refused=refused if settings is not None else None,
        deferred=outcome.deferred_plans,
        outcome=outcome,
        pacer=pacer,
        should_stop=should_stop,
        adaptive=adaptive,
        facts_read_now=facts_read_now,
    )
    outcome.deferred = [plan.instance for plan in outcome.deferred_plans]
    if refused and settings is not None:
        outcome.findings.extend(_refusals(refused, settings, "ModifyInstanceMetadataOptions"))

    failed = (
        tag_with_retry({plan.instance_id: {ENFORCED_AT_TAG: stamp, ENFORCED_BY_TAG: enforced_by} for plan in changed})
        if changed
        else {}
    )
    if recorder is not None:
        recorder.tagged(plan.instance_id for plan in changed if plan.instance_id not in failed)
    for plan in changed:
        outcome.enforced.append(plan.instance_id)
        outcome.findings.append(_enforced(plan, stamp, reason_prefix))
        tag_error = failed.get(plan.instance_id)
        if tag_error is None:
            continue
        if recorder is not None and plan.instance_id not in recorder.ours:
            # Neither tagged nor recorded yet: the record gets a second chance before the run settles for neither.
            recorder.record_again(
                plan.instance_id,
                stamp=stamp,
                reason=_enforced(plan, stamp, reason_prefix).reason,
                hop_limit=plan.hop_limit,
                event_id=plan.event_id,
            )
        record = recorder.ours.get(plan.instance_id) if recorder is not None else None
        if record is not None:
            outcome.findings.append(untagged_finding(record, tag_error.code, tag_error.message))
            logger.warning(
                "enforced, not tagged: watched from the state table", extra={"instance_id": plan.instance_id}
            )
        else:
            # Neither tagged nor recorded: the report and the switch's log line are all there is; a person must tag
            # it for the gate to watch it (the rejection alarm still covers every instance of the account).
            outcome.findings.append(
                tag_error.finding(
                    plan.instance_id,
                    "CreateTags (enforced, but neither tagged nor recorded: tag it "
                    f"{ENFORCED_AT_TAG}={stamp} so the gate watches it)",
                )
            )
            logger.error("enforced, neither tagged nor recorded", extra={"instance_id": plan.instance_id})
        # Not raised: the gate retries the tag from the record, and a retry of this run could not find it otherwise.
    return outcome


def _after_switch(
    plan: ModifyPlan,
    stamp: str,
    reason_prefix: str,
    enforced_by: str,
    recorder: SwitchRecorder | None,
    event_id: str | None,
    outcome: EnforcementOutcome,
) -> bool:
    """Log and record a switch the moment it is made. False when another run had already switched the instance
    after this run read it: this modify changed nothing, and the other run reports it."""
    named_by = plan.event_id or event_id or ""
    log_switch(
        plan.instance_id, enforced_by=enforced_by, stamp=stamp, event_id=named_by or "-", hop_limit=plan.hop_limit
    )
    if recorder is None:
        return True
    other = recorder.record(
        plan.instance_id,
        stamp=stamp,
        reason=_enforced(plan, stamp, reason_prefix).reason,
        hop_limit=plan.hop_limit,
        event_id=named_by,
    )
    if other is None:
        return True
    outcome.switched_elsewhere.append(plan.instance_id)
    return False


def _refusals(refused: dict[str, AwsError], settings: Settings, operation: str) -> list[Finding]:
    """Findings for modifies a policy refused. One look at those instances (a single DescribeInstances) tells an
    exemption made since this run read them (the roles' IAM condition refuses to touch such an instance: the
    exemption held) from any other refusal (an SCP, a boundary): `exempt` for the first, `failed` for the rest,
    neither raised, since a retry would be refused the same way."""
    try:
        now_exempt = {
            facts.instance_id: facts for facts in ec2.describe_by_ids(sorted(refused)) if is_exempt(facts, settings)
        }
    except AwsError as unread:
        logger.warning("refused instances not re-read", extra={"code": unread.code})
        now_exempt = {}
    findings = []
    for instance_id, error in refused.items():
        facts = now_exempt.get(instance_id)
        if facts is not None:
            finding = exempt_finding(facts, settings)
            findings.append(
                finding.model_copy(
                    update={
                        "reason": f"{finding.reason}: exempted while this run was under way; {operation} was refused "
                        f"({error.code}), as the role's exemption condition intends, and nothing changed",
                        "details": {**finding.details, "exempted_during_run": "true"},
                    }
                )
            )
            continue
        logger.warning("refused by a policy", extra={"instance_id": instance_id, "code": error.code})
        finding = error.finding(instance_id, operation)
        findings.append(
            finding.model_copy(
                update={
                    "reason": finding.reason + ": refused by a policy (an SCP or the role's conditions); "
                    "reported once a run, not retried"
                }
            )
        )
    return findings


def _enforced(plan: ModifyPlan, stamp: str, reason_prefix: str) -> Finding:
    reason = reason_prefix + "HttpTokens set to required" + (f" ({plan.why})" if plan.why else "")
    details = {"enforced_at": stamp, "state": plan.instance.state}
    if plan.hop_limit is not None:
        why = f"container host: {plan.container_reason}" if plan.container_reason else "container host"
        reason += f"; hop limit raised from {plan.instance.hop_limit} to {plan.hop_limit} ({why})"
        details["hop_limit"] = str(plan.hop_limit)
    return Finding(resource_id=plan.instance_id, action=Action.ENFORCED, reason=reason, details=details)


def prepare(
    plans: Iterable[PreparePlan],
    *,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    adaptive: bool = False,
    facts_read_now: bool = True,
    settings: Settings | None = None,
) -> EnforcementOutcome:
    """Raise each planned container host's hop limit to 2 (tokens untouched), paced like every modify, and tag it
    `imdsv2-enforcer:prepared-at`. Plans past the time budget are left in `deferred_preparations` for the caller
    (deferred_preparation_finding says so in a report)."""
    outcome = EnforcementOutcome()
    refused: dict[str, AwsError] = {}

    def modify(plan: PreparePlan) -> None:
        ec2.raise_hop_limit(plan.instance_id, CONTAINER_HOP_LIMIT, paced=adaptive)

    changed = _paced(
        plans,
        recheck=lambda plan, live: recheck_prepare(plan, live, settings),
        modify=modify,
        switched=lambda plan: True,
        failed=lambda plan, error: error.finding(plan.instance_id, "ModifyInstanceMetadataOptions (hop limit)"),
        refused=refused if settings is not None else None,
        deferred=outcome.deferred_preparations,
        outcome=outcome,
        pacer=pacer,
        should_stop=should_stop,
        adaptive=adaptive,
        facts_read_now=facts_read_now,
    )
    outcome.deferred = [plan.instance for plan in outcome.deferred_preparations]
    if refused and settings is not None:
        outcome.findings.extend(_refusals(refused, settings, "ModifyInstanceMetadataOptions (hop limit)"))
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if changed:
        try:
            ec2.tag_instances([plan.instance_id for plan in changed], {PREPARED_AT_TAG: stamp})
        except AwsError as error:
            # The hop limit is raised either way; the tag only records when, for a person reading the instance.
            logger.warning("prepared, but not tagged", extra={"code": error.code, "instances": len(changed)})
    for plan in changed:
        outcome.enforced.append(plan.instance_id)
        outcome.findings.append(
            plan.finding.model_copy(update={"details": {**plan.finding.details, "prepared_at": stamp}})
        )
    return outcome


def deferred_preparation_finding(plan: PreparePlan) -> Finding:
    """A container host whose hop limit the sweep did not get to: it keeps its `blocked` finding, saying so."""
    blocked = plan.finding.model_copy(update={"action": Action.BLOCKED, "details": {"deferred": "true"}})
    return blocked.model_copy(update={"reason": blocked.reason + " (hop limit not raised yet: time budget)"})


def _paced(
    plans: Iterable[P],
    *,
    recheck: Callable[[P, InstanceFacts | None], P | Recheck],
    modify: Callable[[P], None],
    switched: Callable[[P], bool],
    failed: Callable[[P, AwsError], Finding],
    refused: dict[str, AwsError] | None,
    deferred: list[P],
    outcome: EnforcementOutcome,
    pacer: Pacer,
    should_stop: Callable[[], bool],
    adaptive: bool,
    facts_read_now: bool,
) -> list[P]:
    """The paced loop both kinds of modify share: batches of RECHECK_BATCH, each re-checked on the live instances,
    then one modify per plan when the pacer allows. `should_stop()` is asked once before each plan (and the plans
    not taken yet are never pulled once it says stop). `switched(plan)` runs right after each successful modify (the
    record of the switch) and says whether it counts as this run's. A policy's refusal goes to `refused` when given.
    Returns the plans carried out."""
    source: Iterator[P] = iter(plans)
    retry: deque[P] = deque()  # throttled (adaptive): tried again, re-checked again
    changed: list[P] = []
    first = True
    while True:
        if should_stop() or pacer.exhausted:
            deferred.extend(retry)
            break
        batch = [retry.popleft() for _ in range(min(len(retry), RECHECK_BATCH))]
        batch += list(islice(source, RECHECK_BATCH - len(batch)))
        if not batch:
            break
        checked = batch if first and facts_read_now else _recheck(batch, recheck, outcome, failed)
        first = False
        for index, plan in enumerate(checked):
            if index and (should_stop() or pacer.exhausted):
                deferred.extend(checked[index:])
                deferred.extend(retry)
                return changed
            pacer.acquire()
            throttled_before = ec2.throttled_attempts()
            try:
                modify(plan)
            except AwsError as error:
                if adaptive and is_throttle(error):
                    pacer.throttled(max(1, ec2.throttled_attempts() - throttled_before))
                    retry.append(plan)
                    continue
                if refused is not None and error.refused:
                    refused[plan.instance_id] = error
                    continue
                outcome.findings.append(failed(plan, error))
                _note_unexpected(outcome, plan.instance_id, error)
                continue
            absorbed = ec2.throttled_attempts() - throttled_before
            if adaptive and absorbed:
                pacer.throttled(absorbed)  # the client's retry got through, but EC2 said slow down first
            pacer.succeeded()
            if switched(plan):
                changed.append(plan)
    return changed


def _recheck(
    batch: Sequence[P],
    recheck: Callable[[P, InstanceFacts | None], P | Recheck],
    outcome: EnforcementOutcome,
    failed: Callable[[P, AwsError], Finding],
) -> list[P]:
    """The batch's plans on their live instances (one DescribeInstances); skipped ones are accounted for. If the
    instances cannot be read, nothing is changed blind: each plan is reported failed with that error."""
    outcome.rechecks += 1
    try:
        live = {facts.instance_id: facts for facts in ec2.describe_by_ids([plan.instance_id for plan in batch])}
    except AwsError as error:
        for plan in batch:
            outcome.findings.append(
                error.finding(plan.instance_id, "DescribeInstances (re-check before the modify; nothing changed)")
            )
        _note_unexpected(outcome, "(re-check)", error)
        return []
    go: list[P] = []
    for plan in batch:
        checked = recheck(plan, live.get(plan.instance_id))
        if not isinstance(checked, Recheck):
            go.append(checked)
            continue
        logger.info("skipped on re-check", extra={"instance_id": plan.instance_id, "why": checked.skip})
        if checked.finding is not None:
            outcome.findings.append(checked.finding)
        elif checked.skip == "gone":
            outcome.gone.append(plan.instance_id)
        else:
            outcome.already_done.append(plan.instance_id)
    return go


def _note_unexpected(outcome: EnforcementOutcome, instance_id: str, error: AwsError) -> None:
    """Log a failure; collect it for the caller to raise (after its report is out) only if a retry can fix it."""
    context = {"operation": error.operation, "instance_id": instance_id, "code": error.code}
    if error.retryable:
        logger.error("AWS call failed: the run raises after its report so that a retry can fix it", extra=context)
        outcome.unexpected_errors.append(f"{error.operation} {instance_id}: {error.code}")
    elif error.expected:
        logger.warning("AWS call failed", extra=context)
    else:
        logger.error("AWS call refused: reported, not retried", extra=context)

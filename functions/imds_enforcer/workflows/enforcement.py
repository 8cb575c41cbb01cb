"""Carry out ModifyPlans: paced modifies, one tag call for everything enforced, a finding for every instance.

Shared by the launch watch and the usage gate, so both follow the same rules (tokens required, hop limit never
lowered, who/when tags) and report the same way.

Before each paced batch of RECHECK_BATCH modifies, one DescribeInstances (instance-id filter) reads the live
instances again: a plan made from older facts (the gate's listing, minutes ago; a continuation's plan) is skipped when
its instance is gone, was tagged exempt since (reported `exempt`) or already requires IMDSv2 (someone else switched
it: not reported again), and it never lowers a hop limit raised since. A batch of 50 is at most 10 s of modifies at
EC2's sustained rate. The first batch of a caller that has just read the instances itself (the launch watch) is not
read again.
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
    recheck_modify,
    recheck_prepare,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG
from imds_enforcer.observability import logger
from imds_enforcer.workflows.pacing import Pacer, is_throttle

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
) -> EnforcementOutcome:
    """Modify each planned instance; a failure on one never stops the others. Unexpected codes are collected
    so that the caller can raise after reporting (Lambda's retry and the failure destination then see them).

    `plans` may be lazy (the gate decides them chunk by chunk as they are taken); what is not taken stays with the
    caller. `adaptive` (the gate): modifies go through the paced client, a throttle slows the pacer down (AIMD) and
    the instance is tried again later in the run, never reported as a failure; otherwise (the launch watch) botocore's
    retries absorb throttles and one that outlasts them is a `failed` finding. `facts_read_now=False`: the plans'
    facts are not fresh, so the first batch is re-checked too."""
    outcome = EnforcementOutcome()

    def modify(plan: ModifyPlan) -> None:
        ec2.require_tokens(plan.instance_id, hop_limit=plan.hop_limit, paced=adaptive)

    changed = _paced(
        plans,
        recheck=recheck_modify,
        modify=modify,
        failed=lambda plan, error: error.finding(plan.instance_id),
        deferred=outcome.deferred_plans,
        outcome=outcome,
        pacer=pacer,
        should_stop=should_stop,
        adaptive=adaptive,
        facts_read_now=facts_read_now,
    )
    outcome.deferred = [plan.instance for plan in outcome.deferred_plans]

    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag_error: AwsError | None = None
    if changed:
        try:
            ec2.tag_instances(
                [plan.instance_id for plan in changed], {ENFORCED_AT_TAG: stamp, ENFORCED_BY_TAG: enforced_by}
            )
        except AwsError as error:
            tag_error = error
            _note_unexpected(outcome, "(tagging)", error, always=True)
    for plan in changed:
        outcome.enforced.append(plan.instance_id)
        outcome.findings.append(_enforced(plan, stamp, reason_prefix))
        if tag_error is not None:
            outcome.findings.append(tag_error.finding(plan.instance_id, "CreateTags (enforced, but not tagged)"))
    return outcome


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
) -> EnforcementOutcome:
    """Raise each planned container host's hop limit to 2 (tokens untouched), paced like every modify, and tag it
    `imdsv2-enforcer:prepared-at`. Plans past the time budget are left in `deferred_preparations` for the caller
    (deferred_preparation_finding says so in a report)."""
    outcome = EnforcementOutcome()

    def modify(plan: PreparePlan) -> None:
        ec2.raise_hop_limit(plan.instance_id, CONTAINER_HOP_LIMIT, paced=adaptive)

    changed = _paced(
        plans,
        recheck=recheck_prepare,
        modify=modify,
        failed=lambda plan, error: error.finding(plan.instance_id, "ModifyInstanceMetadataOptions (hop limit)"),
        deferred=outcome.deferred_preparations,
        outcome=outcome,
        pacer=pacer,
        should_stop=should_stop,
        adaptive=adaptive,
        facts_read_now=facts_read_now,
    )
    outcome.deferred = [plan.instance for plan in outcome.deferred_preparations]
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
    failed: Callable[[P, AwsError], Finding],
    deferred: list[P],
    outcome: EnforcementOutcome,
    pacer: Pacer,
    should_stop: Callable[[], bool],
    adaptive: bool,
    facts_read_now: bool,
) -> list[P]:
    """The paced loop both kinds of modify share: batches of RECHECK_BATCH, each re-checked on the live instances,
    then one modify per plan when the pacer allows. `should_stop()` is asked once before each plan (and the plans
    not taken yet are never pulled once it says stop). Returns the plans carried out."""
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
                outcome.findings.append(failed(plan, error))
                _note_unexpected(outcome, plan.instance_id, error)
                continue
            absorbed = ec2.throttled_attempts() - throttled_before
            if adaptive and absorbed:
                pacer.throttled(absorbed)  # the client's retry got through, but EC2 said slow down first
            pacer.succeeded()
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


def _note_unexpected(outcome: EnforcementOutcome, instance_id: str, error: AwsError, *, always: bool = False) -> None:
    context = {"operation": error.operation, "instance_id": instance_id, "code": error.code}
    if always or not error.expected:
        logger.error("unexpected AWS error", extra=context)
        outcome.unexpected_errors.append(f"{error.operation} {instance_id}: {error.code}")
    else:
        logger.warning("AWS call failed", extra=context)

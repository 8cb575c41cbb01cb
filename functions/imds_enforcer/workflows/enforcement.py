"""Carry out ModifyPlans: paced modifies, one tag call for everything enforced, a finding for every instance.

Shared by the launch watch and the usage gate, so both follow the same rules (tokens required, hop limit never
lowered, who/when tags) and report the same way. After each successful modify, before anything else can fail, the
switch is logged (one structured line) and recorded in the state table (workflows/switch_records): the record is
what a retry or the gate's next sweep reports if this run's report never goes out, and what the watch after the
switch reads if the tags could not be written. A policy's refusal (UnauthorizedOperation: an SCP, the role's
exemption condition) is reported, never raised: a retry would get the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import CONTAINER_HOP_LIMIT, ModifyPlan, PreparePlan, exempt_finding, is_exempt
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG, Settings
from imds_enforcer.domain.switches import untagged_finding
from imds_enforcer.observability import logger
from imds_enforcer.workflows.switch_records import SwitchRecorder, log_switch, tag_with_retry


class Pacer:
    """Token bucket in front of ModifyInstanceMetadataOptions (EC2: a burst of ~100, then ~5 per second)."""

    def __init__(
        self,
        *,
        burst: int,
        rate_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._rate = rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self.waited_seconds = 0.0

    def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self._rate
            self._sleep(wait)
            self.waited_seconds += wait
            self._tokens = 1.0
            self._last = self._clock()
        self._tokens -= 1


@dataclass
class EnforcementOutcome:
    findings: list[Finding] = field(default_factory=list)
    enforced: list[str] = field(default_factory=list)
    deferred: list[InstanceFacts] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    # Switched by another run after this one read them (our modify changed nothing): that run reports them.
    switched_elsewhere: list[str] = field(default_factory=list)


def enforce(
    plans: Sequence[ModifyPlan],
    *,
    enforced_by: str,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    reason_prefix: str = "",
    recorder: SwitchRecorder | None = None,
    settings: Settings | None = None,
    event_id: str | None = None,
) -> EnforcementOutcome:
    """Modify each planned instance; a failure on one never stops the others. Errors a retry can fix are collected
    so that the caller can raise after reporting (Lambda's retry and the failure destination then see them).

    `recorder` (the state table) makes each switch durable and settles overlaps with other runs; `settings` lets a
    refused modify be told apart: an instance tagged exempt since this run read it is reported `exempt`."""
    outcome = EnforcementOutcome()
    changed: list[ModifyPlan] = []
    refused: dict[str, AwsError] = {}
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for plan in plans:
        if should_stop():
            outcome.deferred.append(plan.instance)
            continue
        pacer.acquire()
        try:
            ec2.require_tokens(plan.instance_id, hop_limit=plan.hop_limit)
        except AwsError as error:
            if error.refused and settings is not None:
                refused[plan.instance_id] = error
                continue
            outcome.findings.append(error.finding(plan.instance_id))
            _note_unexpected(outcome, plan.instance_id, error)
            continue
        if _after_switch(plan, stamp, reason_prefix, enforced_by, recorder, event_id, outcome):
            changed.append(plan)
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
    log_switch(
        plan.instance_id, enforced_by=enforced_by, stamp=stamp, event_id=event_id or "-", hop_limit=plan.hop_limit
    )
    if recorder is None:
        return True
    other = recorder.record(
        plan.instance_id, stamp=stamp, reason=_enforced(plan, stamp, reason_prefix).reason, hop_limit=plan.hop_limit
    )
    if other is None:
        return True
    outcome.switched_elsewhere.append(plan.instance_id)
    return False


def _refusals(refused: dict[str, AwsError], settings: Settings, operation: str) -> list[Finding]:
    """Findings for modifies a policy refused. One look at those instances (a single DescribeInstances) tells an
    exemption tagged since this run read them (the roles' IAM condition refuses to touch such an instance: the
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
    plans: Sequence[PreparePlan],
    *,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    settings: Settings | None = None,
) -> EnforcementOutcome:
    """Raise each planned container host's hop limit to 2 (tokens untouched), paced like every modify, and tag it
    `imdsv2-enforcer:prepared-at`. One past the time budget keeps its `blocked` finding, saying so."""
    outcome = EnforcementOutcome()
    changed: list[PreparePlan] = []
    refused: dict[str, AwsError] = {}
    for plan in plans:
        if should_stop():
            outcome.deferred.append(plan.instance)
            blocked = plan.finding.model_copy(update={"action": Action.BLOCKED, "details": {"deferred": "true"}})
            outcome.findings.append(
                blocked.model_copy(update={"reason": blocked.reason + " (hop limit not raised yet: time budget)"})
            )
            continue
        pacer.acquire()
        try:
            ec2.raise_hop_limit(plan.instance_id, CONTAINER_HOP_LIMIT)
        except AwsError as error:
            if error.refused and settings is not None:
                refused[plan.instance_id] = error
                continue
            outcome.findings.append(error.finding(plan.instance_id, "ModifyInstanceMetadataOptions (hop limit)"))
            _note_unexpected(outcome, plan.instance_id, error)
            continue
        changed.append(plan)
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

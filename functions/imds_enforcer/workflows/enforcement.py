"""Carry out ModifyPlans: paced modifies, one tag call for everything enforced, a finding for every instance.

Shared by the launch watch and the usage gate, so both follow the same rules (tokens required, hop limit never
lowered, who/when tags) and report the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import CONTAINER_HOP_LIMIT, ModifyPlan, PreparePlan
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG
from imds_enforcer.observability import logger


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


def enforce(
    plans: Sequence[ModifyPlan],
    *,
    enforced_by: str,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    reason_prefix: str = "",
) -> EnforcementOutcome:
    """Modify each planned instance; a failure on one never stops the others. Unexpected codes are collected
    so that the caller can raise after reporting (Lambda's retry and the failure destination then see them)."""
    outcome = EnforcementOutcome()
    changed: list[ModifyPlan] = []
    for plan in plans:
        if should_stop():
            outcome.deferred.append(plan.instance)
            continue
        pacer.acquire()
        try:
            ec2.require_tokens(plan.instance_id, hop_limit=plan.hop_limit)
        except AwsError as error:
            outcome.findings.append(error.finding(plan.instance_id))
            _note_unexpected(outcome, plan.instance_id, error)
            continue
        changed.append(plan)

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
    plans: Sequence[PreparePlan],
    *,
    pacer: Pacer,
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> EnforcementOutcome:
    """Raise each planned container host's hop limit to 2 (tokens untouched), paced like every modify, and tag it
    `imdsv2-enforcer:prepared-at`. One past the time budget keeps its `blocked` finding, saying so."""
    outcome = EnforcementOutcome()
    changed: list[PreparePlan] = []
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
            outcome.findings.append(error.finding(plan.instance_id, "ModifyInstanceMetadataOptions (hop limit)"))
            _note_unexpected(outcome, plan.instance_id, error)
            continue
        changed.append(plan)
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


def _note_unexpected(outcome: EnforcementOutcome, instance_id: str, error: AwsError, *, always: bool = False) -> None:
    context = {"operation": error.operation, "instance_id": instance_id, "code": error.code}
    if always or not error.expected:
        logger.error("unexpected AWS error", extra=context)
        outcome.unexpected_errors.append(f"{error.operation} {instance_id}: {error.code}")
    else:
        logger.warning("AWS call failed", extra=context)

"""The watch after the switch: instances that require IMDSv2 and reject IMDSv1 calls, reported (and, opt-in,
rolled back) within AWS's limits.

Two callers, one set of rules:
- the usage gate, every sweep, for the instances this service enforced within WATCH_DAYS (their rejections since the
  enforcement, from the batched evidence);
- the rejection alarm's run (`watch_rejections_now`), within minutes of the first rejected call: a CloudWatch alarm on
  EC2's MetadataNoTokenRejected across the account (a Metrics Insights query) triggers it, and it finds every
  rejecting instance with one query, whoever required IMDSv2 on it (this service, a launch template, the account
  default).

A rollback (ROLLBACK_ON_REJECTED) sets one instance back to optional and tags it exempt with the reason, so no sweep
switches it again. It never touches:
- an instance with the exemption tag (a person's decision, and their tag value, stand);
- an instance this service did not switch (its owner required IMDSv2 on purpose: reported, not undone);
- any instance while the region's account default enforces IMDSv2 (HttpTokensEnforced=enabled): AWS refuses
  HttpTokens=optional then, so the finding says so and no exemption tag is written for a rollback that cannot happen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from imds_enforcer.aws import cloudwatch, ec2, sns
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.events import Ignored, read_alarm_event
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import is_exempt
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
from imds_enforcer.domain.usage import rejected_finding, rollback_tag_value
from imds_enforcer.observability import logger
from imds_enforcer.workflows import switch_records
from imds_enforcer.workflows.exemptions import with_central_exemptions
from imds_enforcer.workflows.outcome import EventOutcome

TRIGGER = "rejection_alarm"
# How far back the alarm's run looks: the alarm fires on a 5-minute period; this covers late datapoints and a run
# delayed by retries, within Metrics Insights' 3-hour reach.
ALARM_LOOKBACK = timedelta(hours=1)


@dataclass
class WatchOutcome:
    findings: list[Finding] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    rejected: int = 0  # instances with rejected calls (optional again ones included)
    rolled_back: int = 0


class _AccountDefault:
    """The region's account-level IMDS defaults, read at most once per run, and only if a rollback needs them."""

    def __init__(self) -> None:
        self._read: Mapping[str, Any] | AwsError | None = None

    def enforced(self) -> bool | AwsError:
        if self._read is None:
            try:
                self._read = ec2.instance_metadata_defaults()
            except AwsError as error:
                self._read = error
        if isinstance(self._read, AwsError):
            return self._read
        return self._read.get("HttpTokensEnforced") == "enabled"


def watch(
    instances: Sequence[InstanceFacts],
    rejected: Mapping[str, float],
    *,
    settings: Settings,
    now: datetime,
    before_modify: Callable[[], None] = lambda: None,
    since: str | None = None,
) -> WatchOutcome:
    """Report every instance in `instances` with rejected calls (`rejected[instance_id]`), and roll back the ones
    the rules allow when ROLLBACK_ON_REJECTED is on. `before_modify` paces the modifies (the caller's Pacer)."""
    outcome = WatchOutcome()
    defaults = _AccountDefault()
    for facts in instances:
        calls = rejected.get(facts.instance_id, 0.0)
        if not calls:
            continue
        outcome.rejected += 1
        if facts.accepts_imdsv1:
            # Set back to optional (by a rollback or a person): the optional sweep and the launch watch report it.
            logger.info("rejections on an instance that is optional again", extra={"instance_id": facts.instance_id})
            continue
        finding = rejected_finding(facts, calls, since=since)
        if not settings.ROLLBACK_ON_REJECTED:
            outcome.findings.append(finding)
            continue
        refusal = _why_not_roll_back(facts, settings, defaults)
        if refusal is not None:
            outcome.findings.append(
                finding.model_copy(update={"reason": f"{finding.reason}; not rolled back: {refusal}"})
            )
            continue
        if _roll_back(facts, calls, finding, settings, now, before_modify, outcome):
            outcome.rolled_back += 1
    return outcome


def _why_not_roll_back(facts: InstanceFacts, settings: Settings, defaults: _AccountDefault) -> str | None:
    if is_exempt(facts, settings):
        return f"it carries the exemption tag {settings.EXEMPT_TAG_KEY}, a person's decision: left as it is"
    if ENFORCED_AT_TAG not in facts.tags:
        return "this service did not require IMDSv2 on it (its launch or the account default did): left as it is"
    enforced = defaults.enforced()
    if isinstance(enforced, AwsError):
        return (
            f"the account default could not be read ({enforced.code}), and AWS refuses HttpTokens=optional when it "
            "enforces IMDSv2: nothing changed"
        )
    if enforced:
        return (
            "rollback impossible: the region's account default enforces IMDSv2 (HttpTokensEnforced=enabled), so "
            "AWS refuses HttpTokens=optional; fix the software, or lift the enforcement "
            "(ModifyInstanceMetadataDefaults) or relaunch the workload elsewhere; no exemption tag written"
        )
    return None


def _roll_back(
    facts: InstanceFacts,
    calls: float,
    finding: Finding,
    settings: Settings,
    now: datetime,
    before_modify: Callable[[], None],
    outcome: WatchOutcome,
) -> bool:
    """Exempt first, then optional: if the second call fails, the tag still keeps every sweep from re-enforcing it
    (its MetadataNoToken may read zero: the calls were rejected, not answered), and the next run tries again."""
    operation = "CreateTags"
    try:
        ec2.tag_instances([facts.instance_id], {settings.EXEMPT_TAG_KEY: rollback_tag_value(calls, now=now)})
        operation = "ModifyInstanceMetadataOptions"
        before_modify()
        ec2.allow_tokens_optional(facts.instance_id)
    except AwsError as error:
        outcome.findings.append(error.finding(facts.instance_id, f"rollback: {operation}"))
        if error.retryable:
            outcome.unexpected.append(f"rollback {operation} {facts.instance_id}: {error.code}")
        return False
    outcome.findings.append(
        finding.model_copy(
            update={
                "action": Action.ROLLED_BACK,
                "reason": finding.reason + f"; set back to optional and tagged {settings.EXEMPT_TAG_KEY}",
            }
        )
    )
    return True


def watch_rejections_now(*, settings: Settings, now: datetime) -> WatchOutcome:
    """The alarm's run: every instance of the account and region with IMDSv1 calls rejected in the last hour,
    found with one Metrics Insights query, described with one DescribeInstances, reported (and, opt-in, rolled back)."""
    counts = cloudwatch.rejecting_instances(start=now - ALARM_LOOKBACK, end=now)
    if not counts:
        logger.info("the rejection alarm fired, but no instance rejects IMDSv1 calls now")
        return WatchOutcome()
    instances = ec2.describe_by_ids(sorted(counts))
    if settings.ROLLBACK_ON_REJECTED:
        # An instance the service switched but could not tag is known by its switch record: a rollback may touch it.
        instances = switch_records.with_switch_records(settings, instances)
    return watch(instances, counts, settings=settings, now=now, since="in the last hour")


def run_on_alarm(
    raw_event: object, *, settings: Settings, deployment: Deployment, now: datetime | None = None
) -> EventOutcome:
    """The rejection alarm fired: name the rejecting instances in a report (trigger `rejection_alarm`), and, opt-in,
    roll back the ones the rules allow. Raises after the report is out if an AWS call failed unexpectedly."""
    trigger = read_alarm_event(raw_event, account=deployment.account, region=deployment.region)
    if isinstance(trigger, Ignored):
        logger.info("event ignored", extra={"reason": trigger.reason, "event_id": trigger.event_id})
        return EventOutcome(status="ignored", reason=trigger.reason)
    logger.info("rejection watch", extra={"trigger": trigger.kind, "alarm": trigger.alarm_name})
    moment = now or datetime.now(UTC)
    if settings.ROLLBACK_ON_REJECTED:
        # Who is exempt decides what may be rolled back: the central list, when configured, replaces the tag.
        settings = with_central_exemptions(settings, now=moment)
    outcome = watch_rejections_now(settings=settings, now=moment)
    report = Report(
        account=deployment.account,
        region=deployment.region,
        trigger=TRIGGER,
        mode=settings.ENFORCEMENT_MODE.value,
        source_event_id=trigger.event_id,
        totals={"rejecting": outcome.rejected, "rolled_back": outcome.rolled_back},
        findings=outcome.findings,
    )
    message_ids = sns.publish(report, settings)
    if outcome.unexpected:
        raise UnexpectedAwsError("; ".join(outcome.unexpected), report=report)
    return EventOutcome(status="processed", findings=outcome.findings, message_ids=message_ids)

"""The launch watch: look at the instances an event names and flag, fix or exempt each one that accepts IMDSv1;
and at the launch template, launch configuration or AMI a CloudTrail event created or changed (launch_source_sweep)."""

from __future__ import annotations

from dataclasses import dataclass, field

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.aws.sns import publish_report
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.events import (
    Ignored,
    LaunchTrigger,
    SourceKind,
    SourceTrigger,
    TriggerKind,
    read_launch_event,
)
from imds_enforcer.domain.policy import ModifyPlan, launch_decision
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger
from imds_enforcer.workflows import launch_source_sweep
from imds_enforcer.workflows.enforcement import Pacer, enforce

ENFORCED_BY = "launch_watch"
TRIGGER = "launch"


@dataclass
class LaunchOutcome:
    status: str  # "ignored" or "processed"
    reason: str = ""
    findings: list[Finding] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reason": self.reason,
            "findings": [finding.model_dump(mode="json", exclude_none=True) for finding in self.findings],
            "published": len(self.message_ids),
        }


def watch_launch(raw_event: object, *, settings: Settings, deployment: Deployment) -> LaunchOutcome:
    trigger = read_launch_event(
        raw_event,
        account=deployment.account,
        region=deployment.region,
        service_role_path=settings.SERVICE_ROLE_PATH,
    )
    if isinstance(trigger, Ignored):
        logger.info("event ignored", extra={"reason": trigger.reason, "event_id": trigger.event_id})
        return LaunchOutcome(status="ignored", reason=trigger.reason)
    if isinstance(trigger, SourceTrigger):
        return _watch_source(trigger, settings, deployment)
    if trigger.rejected_ids:
        logger.warning("event names invalid instance ids", extra={"ids": list(trigger.rejected_ids)})
    logger.info("event accepted", extra={"kind": trigger.kind.value, "instances": list(trigger.instance_ids)})

    findings, plans = _decide(trigger, settings)
    outcome = enforce(
        plans,
        enforced_by=ENFORCED_BY,
        pacer=Pacer(burst=settings.MODIFY_BURST, rate_per_second=settings.MODIFY_RATE_PER_SECOND),
        reason_prefix="regression to optional undone: " if trigger.kind is TriggerKind.REGRESSION else "",
    )
    findings.extend(outcome.findings)
    totals = {"instances_in_event": len(trigger.instance_ids), "enforced": len(outcome.enforced)}
    return _finish(findings, outcome.unexpected_errors, totals, trigger.event_id, settings, deployment)


def _finish(
    findings: list[Finding],
    unexpected_errors: list[str],
    totals: dict[str, int],
    event_id: str,
    settings: Settings,
    deployment: Deployment,
) -> LaunchOutcome:
    """Publish what the event found; then raise if an AWS call failed unexpectedly (after the report is out)."""
    report = Report(
        account=deployment.account,
        region=deployment.region,
        trigger=TRIGGER,
        mode=settings.ENFORCEMENT_MODE.value,
        source_event_id=event_id,
        totals=totals,
        findings=findings,
    )
    message_ids = publish_report(
        report,
        topic_arn=settings.REPORT_TOPIC_ARN,
        central_topic_arn=settings.CENTRAL_REPORT_TOPIC_ARN,
        organizational_unit=settings.ORGANIZATIONAL_UNIT,
    )
    if unexpected_errors:
        raise UnexpectedAwsError("; ".join(unexpected_errors), report=report)
    return LaunchOutcome(status="processed", findings=findings, message_ids=message_ids)


def _decide(trigger: LaunchTrigger, settings: Settings) -> tuple[list[Finding], list[ModifyPlan]]:
    described = {facts.instance_id: facts for facts in ec2.describe_by_ids(trigger.instance_ids)}
    findings: list[Finding] = []
    plans: list[ModifyPlan] = []
    for instance_id in trigger.instance_ids:
        facts = described.get(instance_id)
        if facts is None:
            findings.append(
                Finding(
                    resource_id=instance_id,
                    action=Action.FAILED,
                    error_code="InvalidInstanceID.NotFound",
                    reason="DescribeInstances does not list it (not yet visible, or already gone); "
                    "its running state-change event will look again",
                )
            )
            continue
        decision = launch_decision(facts, settings)
        if isinstance(decision, Finding):
            if trigger.kind is TriggerKind.REGRESSION:
                decision = decision.model_copy(update={"reason": "set back to optional: " + decision.reason})
            findings.append(decision)
        elif isinstance(decision, ModifyPlan):
            plans.append(decision)
        elif facts.pending:
            logger.info("pending: its running state-change event will look again", extra={"instance_id": instance_id})
        else:
            logger.info("nothing to do", extra={"instance_id": instance_id, "tokens": facts.http_tokens})
    return findings, plans


def _watch_source(trigger: SourceTrigger, settings: Settings, deployment: Deployment) -> LaunchOutcome:
    """Check the launch sources the event names, with the same rules (and opt-ins) as the gate's sweep."""
    logger.info(
        "event accepted", extra={"kind": trigger.kind.value, "event": trigger.event_name, "ids": trigger.resource_ids}
    )
    ids = list(trigger.resource_ids)
    if trigger.kind is SourceKind.LAUNCH_TEMPLATE:
        outcome = launch_source_sweep.sweep_launch_templates(settings, template_ids=ids)
    elif trigger.kind is SourceKind.LAUNCH_CONFIGURATION:
        outcome = launch_source_sweep.sweep_launch_configurations(settings, names=ids)
    else:
        outcome = launch_source_sweep.sweep_images(settings, image_ids=ids)
    totals = {"resources_in_event": len(ids)}
    return _finish(outcome.findings, outcome.unexpected_errors, totals, trigger.event_id, settings, deployment)

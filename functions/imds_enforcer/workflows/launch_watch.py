"""The launch watch: look at the instances an event names and flag, fix or exempt each one that accepts IMDSv1;
and at the launch template, launch configuration or AMI a CloudTrail event created or changed (launch_source_sweep).

A restart is not a launch. EC2 sends `pending`/`running` for every start of a stopped instance, and resets its
LaunchTime each time; the attach time of its primary network interface stays from the first launch. So:
- a new instance (the event is within minutes of its first launch) has no history: flagged, or in fix mode enforced
  blind (container hosts get hop limit 2, so their pods' SDKs can still get tokens);
- a restarted instance is decided on its own usage history, by the usage gate's rules (one batched GetMetricData
  for all of the event's restarted instances): enforced in fix mode only when proven quiet, otherwise reported as
  the gate would report it (`blocked`, `insufficient_data`, `ready` in flag mode), never enforced blind;
- a set-back to optional (ModifyInstanceMetadataOptions by anyone but this service) is undone in fix mode, unless
  the service had required IMDSv2 on it and IMDSv1 calls were rejected since: the person who restored the workload
  stands, and the finding says who, how many calls, and the way out.
A stop/start-scheduled fleet restarts every morning: a launch or restart is reported only when the instance's
verdict changed since it was last reported (the stack's ledger table); changes (enforced) and failures always are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from imds_enforcer.aws import ec2, ledger
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.door_events import DoorTrigger
from imds_enforcer.domain.events import (
    Ignored,
    LaunchTrigger,
    SourceKind,
    SourceTrigger,
    TriggerKind,
    read_batch,
    read_launch_event,
)
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan, exempt_finding, is_exempt, launch_decision
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
from imds_enforcer.domain.usage import gate_decision, rejected_calls, set_back_finding
from imds_enforcer.observability import logger
from imds_enforcer.workflows import door_sweep, evidence, launch_source_sweep
from imds_enforcer.workflows.enforcement import Pacer, enforce
from imds_enforcer.workflows.exemptions import with_central_exemptions
from imds_enforcer.workflows.outcome import EventOutcome
from imds_enforcer.workflows.switch_records import SwitchRecorder, publish_and_settle

ENFORCED_BY = "launch_watch"
TRIGGER = "launch"
# What always reaches the report, even when the ledger saw the same verdict before: a change, or a failure.
ALWAYS_REPORTED = frozenset({Action.ENFORCED, Action.PREPARED, Action.ROLLED_BACK, Action.FAILED, Action.REJECTED})


@dataclass
class _Run:
    """What the events of one invocation add up to: one report."""

    settings: Settings
    moment: datetime
    recorder: SwitchRecorder | None
    reported: list[Finding] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    remember: list[tuple[list[Finding], LaunchTrigger]] = field(default_factory=list)


def watch_launch(
    raw_event: object, *, settings: Settings, deployment: Deployment, now: datetime | None = None
) -> EventOutcome:
    """Handle a bare EventBridge event, or an SQS batch of them (a burst of launches): one report for all."""
    batch = read_batch(raw_event)
    for reason in batch.skipped:
        logger.warning("queue message skipped", extra={"reason": reason})
    triggers: list[LaunchTrigger | SourceTrigger | DoorTrigger] = []
    ignored: list[str] = list(batch.skipped)
    for event in batch.events:
        trigger = read_launch_event(
            event,
            account=deployment.account,
            region=deployment.region,
            service_role_path=settings.SERVICE_ROLE_PATH,
        )
        if isinstance(trigger, Ignored):
            logger.info("event ignored", extra={"reason": trigger.reason, "event_id": trigger.event_id})
            ignored.append(trigger.reason)
        else:
            triggers.append(trigger)
    if not triggers:
        reason = ignored[0] if len(ignored) == 1 else f"{len(ignored)} events ignored: " + "; ".join(ignored[:5])
        return EventOutcome(status="ignored", reason=reason, from_queue=batch.from_queue)

    moment = now or datetime.now(UTC)
    # The central exemption list, when configured, replaces the tag (unreadable or invalid: nothing changes).
    settings = with_central_exemptions(settings, now=moment)
    # Before anything is read: a switch another run records after this moment is one this run would only repeat.
    run = _Run(
        settings=settings,
        moment=moment,
        recorder=SwitchRecorder.start(settings, enforced_by=ENFORCED_BY, event_id=triggers[0].event_id),
    )
    try:
        for trigger in triggers:
            if isinstance(trigger, SourceTrigger):
                _watch_source(trigger, run)
            elif isinstance(trigger, DoorTrigger):
                _watch_door(trigger, run)
            else:
                _watch_instances(trigger, run)
    except Exception:
        # Whatever went wrong, what was already done is published (or logged in full) before the run raises.
        logger.exception("launch watch failed part way: publishing what it did before raising")
        _publish_partial(run, triggers[0].event_id, deployment)
        raise
    if len(triggers) > 1 or batch.from_queue:
        run.totals["events"] = len(triggers)
        run.totals["events_ignored"] = len(ignored)
    result = _finish(run, triggers[0].event_id, deployment)
    for findings, trigger in run.remember:
        _remember(findings, trigger, settings, run.moment)
    result.from_queue = batch.from_queue
    return result


def _watch_instances(trigger: LaunchTrigger, run: _Run) -> None:
    settings = run.settings
    if trigger.rejected_ids:
        logger.warning("event names invalid instance ids", extra={"ids": list(trigger.rejected_ids)})
    logger.info("event accepted", extra={"kind": trigger.kind.value, "instances": list(trigger.instance_ids)})
    if run.recorder is not None:
        run.recorder.event_id = trigger.event_id  # each switch is recorded under the event that named it
    try:
        decided = _decide(trigger, settings, run.moment)
    except AwsError as error:
        # Its instances could not be read (or their history): each one is reported failed, the batch's other events
        # go on, and the run raises at the end if a retry can fix it.
        logger.error("event not decided", extra={"event_id": trigger.event_id, "code": error.code})
        run.reported.extend(error.finding(instance_id) for instance_id in trigger.instance_ids)
        if error.retryable:
            run.unexpected.append(f"{error.operation} (event {trigger.event_id}): {error.code}")
        return
    outcome = enforce(
        decided.plans,
        enforced_by=ENFORCED_BY,
        pacer=Pacer(burst=settings.MODIFY_BURST, rate_per_second=settings.MODIFY_RATE_PER_SECOND),
        now=run.moment,
        reason_prefix="regression to optional undone: " if trigger.kind is TriggerKind.REGRESSION else "",
        recorder=run.recorder,
        settings=settings,
        event_id=trigger.event_id,
    )
    # A retry of this event finds its instances already required: the switches its earlier attempt recorded but
    # could not report are reported now.
    late = run.recorder.claim_for_event(decided.already_required, [trigger.event_id]) if run.recorder else []
    findings = [*decided.findings, *outcome.findings, *late]
    reported, muted = _mute_unchanged(findings, trigger, settings)
    run.reported.extend(reported)
    run.unexpected.extend(outcome.unexpected_errors)
    run.totals.update(
        {
            "instances_in_event": len(trigger.instance_ids),
            "new": decided.new,
            "restarted": decided.restarted,
            "enforced": len(outcome.enforced),
            "reported_late": len(late),
            "switched_by_another_run": len(outcome.switched_elsewhere),
            "unchanged_not_reported": len(muted),
        }
    )
    run.remember.append((findings, trigger))


def _report(run: _Run, event_id: str, deployment: Deployment) -> Report:
    return Report(
        account=deployment.account,
        region=deployment.region,
        trigger=TRIGGER,
        mode=run.settings.ENFORCEMENT_MODE.value,
        source_event_id=event_id,
        totals=dict(run.totals),
        findings=run.reported,
    )


def _publish_partial(run: _Run, event_id: str, deployment: Deployment) -> None:
    try:
        publish_and_settle(_report(run, event_id, deployment), settings=run.settings, recorder=run.recorder)
    except AwsError:
        logger.error("partial report not published either (logged in full above)")


def _finish(run: _Run, event_id: str, deployment: Deployment) -> EventOutcome:
    """Publish what the events found, settle the switch records (reported where the report went out); then raise if
    an AWS call failed in a way a retry can fix (after the report is out)."""
    report = _report(run, event_id, deployment)
    message_ids = publish_and_settle(report, settings=run.settings, recorder=run.recorder)
    if run.unexpected:
        raise UnexpectedAwsError("; ".join(run.unexpected), report=report)
    return EventOutcome(status="processed", findings=run.reported, message_ids=message_ids)


@dataclass
class _Decided:
    findings: list[Finding] = field(default_factory=list)
    plans: list[ModifyPlan] = field(default_factory=list)
    new: int = 0
    restarted: int = 0
    already_required: list[str] = field(default_factory=list)  # a retry's own earlier switches may be among them


def _decide(trigger: LaunchTrigger, settings: Settings, now: datetime) -> _Decided:
    described = {facts.instance_id: facts for facts in ec2.describe_by_ids(trigger.instance_ids)}
    decided = _Decided()
    fresh: list[InstanceFacts] = []  # new launches, and set-backs to undo: decided without history
    restarted: list[InstanceFacts] = []
    set_back: list[InstanceFacts] = []
    for instance_id in trigger.instance_ids:
        facts = described.get(instance_id)
        if facts is None:
            decided.findings.append(
                Finding(
                    resource_id=instance_id,
                    action=Action.FAILED,
                    error_code="InvalidInstanceID.NotFound",
                    reason="DescribeInstances does not list it (not yet visible, or already gone); "
                    "its running state-change event will look again",
                )
            )
        elif facts.gone or facts.pending or not facts.accepts_imdsv1:
            if not facts.accepts_imdsv1:
                decided.already_required.append(instance_id)
            why = "pending: its running state-change event will look again" if facts.pending else "nothing to do"
            logger.info(why, extra={"instance_id": instance_id, "tokens": facts.http_tokens, "state": facts.state})
        elif is_exempt(facts, settings):
            decided.findings.append(exempt_finding(facts, settings))
        elif trigger.kind is TriggerKind.REGRESSION:
            set_back.append(facts)
        elif trigger.event_time is not None and facts.is_new_at(trigger.event_time):
            fresh.append(facts)
            decided.new += 1
        else:
            restarted.append(facts)
            decided.restarted += 1

    with_history = [*restarted, *set_back]
    if with_history:
        watched = [facts for facts in with_history if ENFORCED_AT_TAG in facts.tags]
        usage = evidence.fetch_usage(restarted, watched, settings=settings, now=now)
        for facts in restarted:
            _add(decided, _restart_decision(facts, gate_decision(facts, usage[facts.instance_id], settings, now=now)))
        for facts in set_back:
            history = usage.get(facts.instance_id)
            rejected = rejected_calls(facts, history) if history else 0.0
            if rejected:
                decided.findings.append(set_back_finding(facts, rejected, set_back_by=trigger.caller))
            else:
                fresh.append(facts)
    if settings.fix and fresh:
        fresh = evidence.with_image_names(fresh)  # container hosts by AMI family too: they get hop limit 2
    for facts in fresh:
        decision = launch_decision(facts, settings)
        if isinstance(decision, Finding) and trigger.kind is TriggerKind.REGRESSION:
            decision = decision.model_copy(update={"reason": "set back to optional: " + decision.reason})
        _add(decided, decision)
    return decided


def _restart_decision(facts: InstanceFacts, decision: Finding | ModifyPlan | object) -> Finding | ModifyPlan | None:
    """A restarted instance's verdict, saying it is a restart (so nobody reads `blocked` as a failed launch)."""
    first = facts.first_launch_time
    since = f"first launched {first.strftime('%Y-%m-%dT%H:%M:%SZ')}" if first else "first launch unknown"
    if isinstance(decision, Finding):
        return decision.model_copy(
            update={
                "reason": f"restarted ({since}), decided on its usage history: {decision.reason}",
                "details": {**decision.details, "launch": "restart"},
            }
        )
    if isinstance(decision, ModifyPlan):
        return replace(decision, why=f"restarted ({since}), proven quiet: {decision.why}")
    return None


def _add(decided: _Decided, decision: Finding | ModifyPlan | None) -> None:
    if isinstance(decision, Finding):
        decided.findings.append(decision)
    elif isinstance(decision, ModifyPlan):
        decided.plans.append(decision)


def _mute_unchanged(
    findings: list[Finding], trigger: LaunchTrigger, settings: Settings
) -> tuple[list[Finding], list[Finding]]:
    """(reported, muted): a launch or restart whose verdict is the one last reported for that instance is muted.

    A set-back is always reported (a person's action), and so is every change and failure. Without the ledger table
    (or when it cannot be read), everything is reported."""
    if not settings.LEDGER_TABLE_NAME or trigger.kind is TriggerKind.REGRESSION:
        return findings, []
    candidates = [finding.resource_id for finding in findings if finding.action not in ALWAYS_REPORTED]
    if not candidates:
        return findings, []
    try:
        last = ledger.last_verdicts(settings.LEDGER_TABLE_NAME, candidates)
    except AwsError as error:
        logger.warning("ledger unreadable: every verdict is reported", extra={"code": error.code})
        return findings, []
    reported: list[Finding] = []
    muted: list[Finding] = []
    for finding in findings:
        unchanged = finding.action not in ALWAYS_REPORTED and last.get(finding.resource_id) == finding.action.value
        (muted if unchanged else reported).append(finding)
    if muted:
        logger.info("verdicts unchanged since the last report", extra={"instances": [f.resource_id for f in muted]})
    return reported, muted


def _remember(findings: list[Finding], trigger: LaunchTrigger, settings: Settings, now: datetime) -> None:
    """Record each instance's verdict (after the report is out), so the next restart with the same one is muted."""
    if not settings.LEDGER_TABLE_NAME:
        return
    verdicts = {
        finding.resource_id: finding.action.value
        for finding in findings
        if finding.resource_type == "instance" and finding.action is not Action.FAILED
    }
    if not verdicts:
        return
    try:
        ledger.record_verdicts(settings.LEDGER_TABLE_NAME, verdicts, now=now)
    except AwsError as error:
        logger.warning("ledger not updated: the next event may report these again", extra={"code": error.code})


def _watch_source(trigger: SourceTrigger, run: _Run) -> None:
    """Check the launch sources the event names, with the same rules (and opt-ins) as the gate's sweep."""
    logger.info(
        "event accepted", extra={"kind": trigger.kind.value, "event": trigger.event_name, "ids": trigger.resource_ids}
    )
    ids = list(trigger.resource_ids)
    if trigger.kind is SourceKind.LAUNCH_TEMPLATE:
        outcome = launch_source_sweep.sweep_launch_templates(run.settings, template_ids=ids)
    elif trigger.kind is SourceKind.LAUNCH_CONFIGURATION:
        outcome = launch_source_sweep.sweep_launch_configurations(run.settings, names=ids)
    else:
        outcome = launch_source_sweep.sweep_images(run.settings, image_ids=ids)
    run.reported.extend(outcome.findings)
    run.unexpected.extend(outcome.unexpected_errors)
    run.totals["resources_in_event"] += len(ids)


def _watch_door(trigger: DoorTrigger, run: _Run) -> None:
    """Check the doors outside EC2 instances the event names, with the same rules (and opt-ins) as the gate."""
    logger.info(
        "event accepted",
        extra={"kind": trigger.resource_type, "event": trigger.event_name, "ids": trigger.resource_ids},
    )
    ids = list(trigger.resource_ids)
    outcome = door_sweep.DOOR_SWEEPS[trigger.resource_type](run.settings, names=ids)
    run.reported.extend(outcome.findings)
    run.unexpected.extend(outcome.unexpected_errors)
    run.totals["resources_in_event"] += len(ids)

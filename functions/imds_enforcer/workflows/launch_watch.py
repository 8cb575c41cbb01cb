"""The launch watch: look at the instances an event names and flag, fix or exempt each one that accepts IMDSv1;
and at the launch template, launch configuration or AMI a CloudTrail event created or changed (launch_source_sweep).

A restart is not a launch. EC2 sends `pending`/`running` for every start of a stopped instance, and resets its
LaunchTime each time; the attach time of its primary network interface stays from the first launch. So:
- a new instance (the event is within minutes of its first launch) has no history: flagged, or in fix mode enforced
  blind (container hosts get hop limit 2, so their pods' SDKs can still get tokens);
- a restarted instance is decided on its own usage history, by the usage gate's rules (one batched GetMetricData
  for all of the batch's restarted instances): enforced in fix mode only when proven quiet, otherwise reported as
  the gate would report it (`blocked`, `insufficient_data`, `ready` in flag mode), never enforced blind;
- a set-back to optional (ModifyInstanceMetadataOptions by anyone but this service) is undone in fix mode, unless
  the service had required IMDSv2 on it and IMDSv1 calls were rejected since: the person who restored the workload
  stands, and the finding says who, how many calls, and the way out.
A stop/start-scheduled fleet restarts every morning: a launch or restart is reported only when the instance's
verdict changed since it was last reported (the stack's ledger table); changes (enforced) and failures always are.
The events of one queue batch are read and decided together (one DescribeInstances, one GetMetricData, one paced
enforcement, one tag call), each instance once, and each switch is recorded under the event that named it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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
from imds_enforcer.domain.usage import deferred_finding, gate_decision, rejected_calls, set_back_finding
from imds_enforcer.observability import logger
from imds_enforcer.workflows import door_sweep, evidence, launch_source_sweep
from imds_enforcer.workflows.enforcement import Pacer, enforce
from imds_enforcer.workflows.exemptions import with_central_exemptions
from imds_enforcer.workflows.outcome import EventOutcome
from imds_enforcer.workflows.switch_records import SwitchRecorder, publish_and_settle

ENFORCED_BY = "launch_watch"
TRIGGER = "launch"
# The function runs at most 60 s (infra/constructs/launch_watch.py): the modifies stop with this much left, for the
# tag call, the records and the report (each with its retries). What is left is delivered again by the queue.
DEADLINE_MARGIN_SECONDS = 15
# What always reaches the report, even when the ledger saw the same verdict before: a change, or a failure.
ALWAYS_REPORTED = frozenset({Action.ENFORCED, Action.PREPARED, Action.ROLLED_BACK, Action.FAILED, Action.REJECTED})


@dataclass
class _Run:
    """What the events of one invocation add up to: one report."""

    settings: Settings
    moment: datetime
    recorder: SwitchRecorder | None
    should_stop: Callable[[], bool] = lambda: False
    reported: list[Finding] = field(default_factory=list)
    # Events whose instances the run had no time to modify: delivered again (their queue messages), or retried.
    unfinished: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    remember: list[Finding] = field(default_factory=list)


def watch_launch(
    raw_event: object,
    *,
    settings: Settings,
    deployment: Deployment,
    now: datetime | None = None,
    remaining_ms: Callable[[], int] | None = None,
) -> EventOutcome:
    """Handle a bare EventBridge event, or an SQS batch of them (a burst of launches): one report for all.

    `remaining_ms` (the Lambda context's clock): when the run's time is nearly up, the modifies stop, what is left
    is reported `ready` (deferred), and its events' queue messages are delivered again (a bare event: the run raises
    after the report, and Lambda retries it)."""
    batch = read_batch(raw_event)
    for reason in batch.skipped:
        logger.warning("queue message skipped", extra={"reason": reason})
    triggers: list[LaunchTrigger | SourceTrigger | DoorTrigger] = []
    ignored: list[str] = list(batch.skipped)
    messages: dict[str, list[str]] = {}  # event id -> its queue messages
    for index, event in enumerate(batch.events):
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
            if index < len(batch.message_ids):
                messages.setdefault(trigger.event_id, []).append(batch.message_ids[index])
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
        should_stop=lambda: remaining_ms is not None and remaining_ms() < DEADLINE_MARGIN_SECONDS * 1000,
    )
    launches = [trigger for trigger in triggers if isinstance(trigger, LaunchTrigger)]
    try:
        if launches:
            _watch_instances(launches, run)
        for trigger in triggers:
            if isinstance(trigger, SourceTrigger):
                _watch_source(trigger, run)
            elif isinstance(trigger, DoorTrigger):
                _watch_door(trigger, run)
    except Exception:
        # Whatever went wrong, what was already done is published (or logged in full) before the run raises.
        logger.exception("launch watch failed part way: publishing what it did before raising")
        _publish_partial(run, triggers[0].event_id, deployment)
        raise
    if len(triggers) > 1 or batch.from_queue:
        run.totals["events"] = len(triggers)
        run.totals["events_ignored"] = len(ignored)
    if run.unfinished:
        run.totals["events_delivered_again"] = len(run.unfinished)
        if not batch.from_queue:
            run.unexpected.append("time ran out before every instance was modified: the event is retried")
    result = _finish(run, triggers[0].event_id, deployment)
    _remember(run.remember, settings, run.moment)
    result.from_queue = batch.from_queue
    result.redeliver = sorted({message for event_id in run.unfinished for message in messages.get(event_id, [])})
    return result


def _watch_instances(triggers: Sequence[LaunchTrigger], run: _Run) -> None:
    """Every instance the batch's events name, read and decided together: one DescribeInstances, one GetMetricData
    for all their restarts and set-backs, one DescribeImages, one paced enforcement and one tag call for the whole
    batch (an Auto Scaling group's 50 `running` events, a scheduled fleet's morning start)."""
    settings = run.settings
    for trigger in triggers:
        if trigger.rejected_ids:
            logger.warning("event names invalid instance ids", extra={"ids": list(trigger.rejected_ids)})
        logger.info("event accepted", extra={"kind": trigger.kind.value, "instances": list(trigger.instance_ids)})
    named = _name_once(triggers)
    event_ids = [trigger.event_id for trigger in triggers]
    try:
        decided = _decide(named, settings, run.moment)
    except AwsError as error:
        # The instances could not be read: each one is reported failed, the batch's other events (launch sources,
        # doors) go on, and the run raises at the end if a retry can fix it. An earlier attempt's switches of these
        # events, recorded but never reported, are reported all the same: the record is written after the modify.
        logger.error("instances not read", extra={"events": len(triggers), "code": error.code})
        late = run.recorder.claim_for_event(list(named), event_ids) if run.recorder else []
        claimed = {finding.resource_id for finding in late}
        run.reported.extend(error.finding(instance_id) for instance_id in named if instance_id not in claimed)
        run.reported.extend(late)
        run.totals.update({"instances_in_event": _named_count(triggers), "reported_late": len(late)})
        if error.retryable:
            run.unexpected.append(f"{error.operation} ({len(triggers)} events): {error.code}")
        return
    run.unexpected.extend(decided.unexpected)
    pacer = Pacer(burst=settings.MODIFY_BURST, rate_per_second=settings.MODIFY_RATE_PER_SECOND)
    findings = list(decided.findings)
    enforced = switched_elsewhere = 0
    for reason_prefix, plans in (("", decided.plans), ("regression to optional undone: ", decided.undone)):
        if not plans:
            continue
        untaken = iter(plans)  # what enforce() did not pull when the time ran out stays here
        outcome = enforce(
            untaken,
            enforced_by=ENFORCED_BY,
            pacer=pacer,
            now=run.moment,
            should_stop=run.should_stop,
            reason_prefix=reason_prefix,
            recorder=run.recorder,
            settings=settings,
        )
        findings.extend(outcome.findings)
        for plan in [*outcome.deferred_plans, *untaken]:
            findings.append(deferred_finding(plan, because="the run's time ran out; its event is delivered again"))
            run.unfinished.add(plan.event_id)
        run.unexpected.extend(outcome.unexpected_errors)
        enforced += len(outcome.enforced)
        switched_elsewhere += len(outcome.switched_elsewhere)
    # A retry of these events finds their instances already required: the switches its earlier attempt recorded but
    # could not report are reported now.
    late = run.recorder.claim_for_event(decided.already_required, event_ids) if run.recorder else []
    findings.extend(late)
    reported, muted = _mute_unchanged(findings, decided.set_back, settings)
    run.reported.extend(reported)
    run.totals.update(
        {
            "instances_in_event": _named_count(triggers),
            "new": decided.new,
            "restarted": decided.restarted,
            "enforced": enforced,
            "reported_late": len(late),
            "switched_by_another_run": switched_elsewhere,
            "unchanged_not_reported": len(muted),
        }
    )
    run.remember.extend(findings)


def _named_count(triggers: Sequence[LaunchTrigger]) -> int:
    """How many instances the events name (an instance two events name counts twice)."""
    return sum(len(trigger.instance_ids) for trigger in triggers)


def _name_once(triggers: Sequence[LaunchTrigger]) -> dict[str, LaunchTrigger]:
    """Each instance with the one event it is decided under: an instance several events name (its RunInstances
    record and its `running` event, in one batch) is decided and reported once. A set-back, a person's action, comes
    first; otherwise the first event that names it."""
    named: dict[str, LaunchTrigger] = {}
    ordered = sorted(triggers, key=lambda trigger: trigger.kind is not TriggerKind.REGRESSION)
    for trigger in ordered:
        for instance_id in trigger.instance_ids:
            named.setdefault(instance_id, trigger)
    return named


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
    plans: list[ModifyPlan] = field(default_factory=list)  # new launches, proven-quiet restarts
    undone: list[ModifyPlan] = field(default_factory=list)  # set-backs to optional, undone
    set_back: set[str] = field(default_factory=set)  # instances a person set back: always reported
    new: int = 0
    restarted: int = 0
    already_required: list[str] = field(default_factory=list)  # a retry's own earlier switches may be among them
    unexpected: list[str] = field(default_factory=list)


def _decide(named: Mapping[str, LaunchTrigger], settings: Settings, now: datetime) -> _Decided:
    described = {facts.instance_id: facts for facts in ec2.describe_by_ids(list(named))}
    decided = _Decided()
    fresh: list[InstanceFacts] = []  # new launches, and set-backs to undo: decided without history
    restarted: list[InstanceFacts] = []
    set_back: list[InstanceFacts] = []
    for instance_id, trigger in named.items():
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
            decided.set_back.add(instance_id)
        elif trigger.event_time is not None and facts.is_new_at(trigger.event_time):
            fresh.append(facts)
            decided.new += 1
        else:
            restarted.append(facts)
            decided.restarted += 1

    if restarted or set_back:
        _decide_on_history(restarted, set_back, named, decided, settings=settings, now=now, fresh=fresh)
    if settings.fix and fresh:
        fresh = evidence.with_image_names(fresh)  # container hosts by AMI family too: they get hop limit 2
    for facts in fresh:
        trigger = named[facts.instance_id]
        decision = launch_decision(facts, settings)
        if trigger.kind is TriggerKind.REGRESSION:
            if isinstance(decision, Finding):
                decision = decision.model_copy(update={"reason": "set back to optional: " + decision.reason})
            elif isinstance(decision, ModifyPlan):
                decided.undone.append(replace(decision, event_id=trigger.event_id))
                continue
        _add(decided, decision, trigger)
    return decided


def _decide_on_history(
    restarted: Sequence[InstanceFacts],
    set_back: Sequence[InstanceFacts],
    named: Mapping[str, LaunchTrigger],
    decided: _Decided,
    *,
    settings: Settings,
    now: datetime,
    fresh: list[InstanceFacts],
) -> None:
    """Restarts decided on their own usage history, set-backs on their rejected calls: one GetMetricData (per 500
    queries) for all of them. When the history cannot be read, those instances are reported failed (never enforced
    blind); the batch's new launches go on."""
    with_history = [*restarted, *set_back]
    watched = [facts for facts in with_history if ENFORCED_AT_TAG in facts.tags]
    try:
        usage = evidence.fetch_usage(restarted, watched, settings=settings, now=now)
    except AwsError as error:
        logger.error("usage history not read", extra={"instances": len(with_history), "code": error.code})
        decided.findings.extend(error.finding(facts.instance_id) for facts in with_history)
        if error.retryable:
            decided.unexpected.append(f"{error.operation} ({len(with_history)} instances): {error.code}")
        return
    for facts in restarted:
        decision = _restart_decision(facts, gate_decision(facts, usage[facts.instance_id], settings, now=now))
        _add(decided, decision, named[facts.instance_id])
    for facts in set_back:
        history = usage.get(facts.instance_id)
        rejected = rejected_calls(facts, history) if history else 0.0
        if rejected:
            caller = named[facts.instance_id].caller
            decided.findings.append(set_back_finding(facts, rejected, set_back_by=caller))
        else:
            fresh.append(facts)


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


def _add(decided: _Decided, decision: Finding | ModifyPlan | None, trigger: LaunchTrigger) -> None:
    if isinstance(decision, Finding):
        decided.findings.append(decision)
    elif isinstance(decision, ModifyPlan):
        decided.plans.append(replace(decision, event_id=trigger.event_id))


def _mute_unchanged(
    findings: list[Finding], set_back: set[str], settings: Settings
) -> tuple[list[Finding], list[Finding]]:
    """(reported, muted): a launch or restart whose verdict is the one last reported for that instance is muted.

    A set-back is always reported (a person's action), and so is every change and failure. Without the ledger table
    (or when it cannot be read), everything is reported."""
    if not settings.LEDGER_TABLE_NAME:
        return findings, []

    def mutable(finding: Finding) -> bool:
        return finding.action not in ALWAYS_REPORTED and finding.resource_id not in set_back

    candidates = [finding.resource_id for finding in findings if mutable(finding)]
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
        unchanged = mutable(finding) and last.get(finding.resource_id) == finding.action.value
        (muted if unchanged else reported).append(finding)
    if muted:
        logger.info("verdicts unchanged since the last report", extra={"instances": [f.resource_id for f in muted]})
    return reported, muted


def _remember(findings: list[Finding], settings: Settings, now: datetime) -> None:
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

"""The usage gate: one scheduled sweep of the region that switches instances to IMDSv2 on evidence.

A run, in order (the gate is stateless: the live API says what is left, so every run starts from scratch):
1. list the instances whose tokens are optional (server-side filter, 1000 a page) and the ones the service
   enforced within WATCH_DAYS (tag `imdsv2-enforcer:enforced-at`, any tokens value); look up their AMIs' names
   (container hosts are recognised by AMI family as well as by tags);
2. fetch `MetadataNoToken` and the running reference (`CPUUtilization`) for the first and `MetadataNoTokenRejected`
   for the second in the same batched GetMetricData calls (500 queries a call, whatever the metric);
3. report (and, opt-in, roll back) the enforced instances that reject IMDSv1 calls (workflows/rejection_watch),
   before anything new is switched;
4. decide every optional instance (usage.gate_decision) and, in fix mode, enforce the ready ones and prepare the
   container hosts that still call IMDSv1 at hop limit 1 (hop limit 2, tokens left optional), paced, stopping when
   the Lambda's time budget runs low;
5. when the region is clean, set the account default (opt-in), with hop limit 2 when container hosts run here;
6. check where new instances come from (launch templates, launch configurations, own AMIs: launch_source_sweep), unless
   the time budget is already low (then the next run does it, and totals["source_checks_skipped"] says so);
7. publish one report (trigger `gate`) in which every optional instance appears, with the run's totals.

Deferred instances (fix mode, ready, but the time budget ran out before their turn) are reported as `ready` with
details `{"deferred": "true"}`: `ready` already means "would be enforced, and was not", which is exactly their
state, and the contract's list of actions stays closed. The reason says why, and totals["deferred"] counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.events import Ignored, read_gate_event
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
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
from imds_enforcer.domain.usage import (
    MetadataUsage,
    UsageWindow,
    gate_decision,
    read_evidence,
    ready_finding,
    rejected_calls,
    under_watch,
)
from imds_enforcer.observability import logger
from imds_enforcer.workflows import evidence, exemptions, launch_source_sweep, rejection_watch, switch_records
from imds_enforcer.workflows.enforcement import Pacer, enforce, prepare

ENFORCED_BY = "usage_gate"
TRIGGER = "gate"
ACCOUNT_RESOURCE = "account"


@dataclass
class GateOutcome:
    status: str  # "ignored" or "processed"
    reason: str = ""
    findings: list[Finding] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    message_ids: list[str] = field(default_factory=list)
    report: Report | None = None

    @property
    def counts(self) -> dict[str, int]:
        return Report(account="", region="", trigger=TRIGGER, mode="", findings=self.findings).counts

    def summary(self) -> dict[str, object]:
        # Counts, not findings: a 10,000-instance run would exceed Lambda's 6 MB response.
        return {
            "status": self.status,
            "reason": self.reason,
            "totals": self.totals,
            "counts": self.counts,
            "published": len(self.message_ids),
        }


@dataclass
class _Run:
    settings: Settings
    now: datetime
    pacer: Pacer
    findings: list[Finding] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def run_gate(
    raw_event: object,
    *,
    settings: Settings,
    deployment: Deployment,
    remaining_ms: Callable[[], int] | None = None,
    now: datetime | None = None,
    publish: bool = True,
) -> GateOutcome:
    """One sweep. `publish=False` (the CLI) returns the report instead of sending it to the topic."""
    trigger = read_gate_event(raw_event, account=deployment.account)
    if isinstance(trigger, Ignored):
        logger.warning("event ignored", extra={"reason": trigger.reason, "event_id": trigger.event_id})
        return GateOutcome(status="ignored", reason=trigger.reason)
    logger.info("gate run", extra={"trigger": trigger.kind, "event_id": trigger.event_id})
    # The central exemption list, when configured, replaces the tag for this run (unreadable: nothing changes).
    settings = exemptions.with_central_exemptions(settings, now=now or datetime.now(UTC))

    run = _Run(
        settings=settings,
        now=now or datetime.now(UTC),
        pacer=Pacer(burst=settings.MODIFY_BURST, rate_per_second=settings.MODIFY_RATE_PER_SECOND),
    )
    margin_ms = settings.DEADLINE_MARGIN_SECONDS * 1000
    recorder = switch_records.SwitchRecorder.start(settings, enforced_by=ENFORCED_BY, event_id=trigger.event_id)
    run.findings.extend(exemptions.expired_exemption_findings(settings))

    def should_stop() -> bool:
        return remaining_ms is not None and remaining_ms() < margin_ms

    optional = evidence.with_image_names(list(ec2.iter_instances_by_tokens("optional")))
    watched = [
        facts for facts in ec2.iter_instances_tagged(ENFORCED_AT_TAG) if under_watch(facts, settings, now=run.now)
    ]
    # Switches no report carried yet (reported now) and untagged ones (tagged again, and watched from the record).
    open_switches = switch_records.reconcile(recorder, now=run.now)
    run.findings.extend(open_switches.findings)
    watched += [
        facts
        for facts in switch_records.watch_untagged(open_switches.untagged, watched)
        if under_watch(facts, settings, now=run.now)
    ]
    usage = evidence.fetch_usage(optional, watched, settings=settings, now=run.now)

    watch = rejection_watch.watch(
        watched,
        {facts.instance_id: rejected_calls(facts, usage[facts.instance_id]) for facts in watched},
        settings=settings,
        now=run.now,
        before_modify=run.pacer.acquire,
    )
    run.findings.extend(watch.findings)
    run.unexpected.extend(watch.unexpected)
    plans, preparations = _decide(optional, usage, run)
    outcome = enforce(
        plans,
        enforced_by=ENFORCED_BY,
        pacer=run.pacer,
        now=run.now,
        should_stop=should_stop,
        recorder=recorder,
        settings=settings,
        event_id=trigger.event_id,
    )
    run.findings.extend(outcome.findings)
    run.unexpected.extend(outcome.unexpected_errors)
    usage_window = UsageWindow.ending_at(run.now, settings.LOOKBACK_DAYS)
    for instance in outcome.deferred:
        run.findings.append(
            ready_finding(instance, read_evidence(usage[instance.instance_id], usage_window), deferred=True)
        )
    prepared = prepare(preparations, pacer=run.pacer, now=run.now, should_stop=should_stop, settings=settings)
    run.findings.extend(prepared.findings)
    run.unexpected.extend(prepared.unexpected_errors)

    enforced = set(outcome.enforced)
    left_open = [facts for facts in optional if facts.instance_id not in enforced and not is_exempt(facts, settings)]
    if settings.SET_ACCOUNT_DEFAULT:
        _account_default(run, deployment, left_open=len(left_open), rejected=watch.rejected, seen=[*optional, *watched])
    skipped_sources = _check_sources(run, should_stop)

    totals = {
        "instances_scanned": len(optional),
        "optional_remaining": len(optional) - len(enforced) + watch.rolled_back,
        "enforced": len(enforced),
        "prepared": len(prepared.enforced),
        "deferred": len(outcome.deferred),
        "watched": len(watched),
        "rejected": watch.rejected,
        "rolled_back": watch.rolled_back,
        "modify_wait_seconds": round(run.pacer.waited_seconds),
        "source_checks_skipped": skipped_sources,
        "reported_late": len(open_switches.findings),
        "switched_by_another_run": len(outcome.switched_elsewhere),
    }
    report = Report(
        account=deployment.account,
        region=deployment.region,
        trigger=TRIGGER,
        mode=settings.ENFORCEMENT_MODE.value,
        source_event_id=trigger.event_id,
        totals=totals,
        findings=run.findings,
    )
    logger.info("gate decided", extra={"totals": totals, "counts": report.counts})
    message_ids = switch_records.publish_and_settle(
        report, topic_arn=settings.REPORT_TOPIC_ARN, recorder=recorder, publish=publish
    )
    if run.unexpected:
        raise UnexpectedAwsError("; ".join(run.unexpected), report=report)
    return GateOutcome(status="processed", findings=run.findings, totals=totals, message_ids=message_ids, report=report)


SOURCE_CHECKS: tuple[tuple[str, Callable[[Settings], launch_source_sweep.SourceOutcome]], ...] = (
    ("launch templates", launch_source_sweep.sweep_launch_templates),
    ("launch configurations", launch_source_sweep.sweep_launch_configurations),
    ("images", launch_source_sweep.sweep_images),
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


def _decide(
    optional: list[InstanceFacts], usage: dict[str, MetadataUsage], run: _Run
) -> tuple[list[ModifyPlan], list[PreparePlan]]:
    plans: list[ModifyPlan] = []
    preparations: list[PreparePlan] = []
    for facts in optional:
        decision = gate_decision(facts, usage[facts.instance_id], run.settings, now=run.now)
        if isinstance(decision, Finding):
            run.findings.append(decision)
        elif isinstance(decision, ModifyPlan):
            plans.append(decision)
        elif isinstance(decision, PreparePlan):
            preparations.append(decision)
        else:
            logger.info("nothing to do", extra={"instance_id": facts.instance_id, "tokens": facts.http_tokens})
    return plans, preparations


def _account(deployment: Deployment) -> dict[str, Any]:
    """Who an account-level finding is about."""
    return {"resource_type": ACCOUNT_RESOURCE, "resource_id": deployment.account}


def _account_default(
    run: _Run, deployment: Deployment, *, left_open: int, rejected: int, seen: list[InstanceFacts]
) -> None:
    """Require IMDSv2 for new launches once the region is clean: no optional instance left but exempt ones,
    and nothing rejected in the watch period. A default set by a declarative policy is reported, not fought.

    The hop limit follows the evidence: container hosts that launch later without their own metadata options would
    get hop limit 1 from the default, their pods' SDKs could not get tokens, and the launch would break them. So
    where container hosts run in the region (among the instances seen, or any live instance with a container-host
    tag), the default also gets hop limit 2."""
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
    hop_limit, hop_reason = _default_hop_limit(run, seen)
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


def _default_hop_limit(run: _Run, seen: list[InstanceFacts]) -> tuple[int | None, str]:
    """The hop limit the account default gets (None: left as it is), and why, in words for the report."""
    for facts in seen:
        reason = instance_container_reason(facts, run.settings)
        if reason:
            return CONTAINER_HOP_LIMIT, (
                f"hop limit {CONTAINER_HOP_LIMIT} because container hosts run here ({facts.instance_id}: {reason})"
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

"""The usage gate: one scheduled sweep of the region that switches instances to IMDSv2 on evidence.

A run, in order (the gate is stateless: the live API says what is left, so every run starts from scratch):
1. list the instances whose tokens are optional (server-side filter, 1000 a page) and the ones the service
   enforced within WATCH_DAYS (tag `imdsv2-enforcer:enforced-at`, any tokens value);
2. fetch `MetadataNoToken` for the first and `MetadataNoTokenRejected` for the second in the same batched
   GetMetricData calls (500 queries a call, whatever the metric);
3. roll back the enforced instances that reject IMDSv1 calls (opt-in), before anything new is switched;
4. decide every optional instance (usage.gate_decision) and enforce the ready ones in fix mode, paced, stopping
   when the Lambda's time budget runs low;
5. when the region is clean, set the account default (opt-in);
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

from imds_enforcer.aws import cloudwatch, ec2
from imds_enforcer.aws.cloudwatch import MetricRequest
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.aws.sns import publish_report
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.events import Ignored, read_gate_event
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.metric_names import NO_TOKEN, NO_TOKEN_REJECTED
from imds_enforcer.domain.policy import ModifyPlan, is_exempt
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
from imds_enforcer.domain.usage import (
    MetadataUsage,
    MetricSeries,
    UsageWindow,
    gate_decision,
    read_evidence,
    ready_finding,
    rejected_calls,
    rejected_finding,
    rollback_tag_value,
    under_watch,
    watch_window,
)
from imds_enforcer.observability import logger
from imds_enforcer.workflows import launch_source_sweep
from imds_enforcer.workflows.enforcement import Pacer, enforce

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

    run = _Run(
        settings=settings,
        now=now or datetime.now(UTC),
        pacer=Pacer(burst=settings.MODIFY_BURST, rate_per_second=settings.MODIFY_RATE_PER_SECOND),
    )
    margin_ms = settings.DEADLINE_MARGIN_SECONDS * 1000

    def should_stop() -> bool:
        return remaining_ms is not None and remaining_ms() < margin_ms

    optional = list(ec2.iter_instances_by_tokens("optional"))
    watched = [
        facts for facts in ec2.iter_instances_tagged(ENFORCED_AT_TAG) if under_watch(facts, settings, now=run.now)
    ]
    usage = _fetch_usage(optional, watched, run)

    rejected, rolled_back = _watch(watched, usage, run)
    plans = _decide(optional, usage, run)
    outcome = enforce(plans, enforced_by=ENFORCED_BY, pacer=run.pacer, now=run.now, should_stop=should_stop)
    run.findings.extend(outcome.findings)
    run.unexpected.extend(outcome.unexpected_errors)
    usage_window = UsageWindow.ending_at(run.now, settings.LOOKBACK_DAYS)
    for instance in outcome.deferred:
        evidence = read_evidence(usage[instance.instance_id].no_token, usage_window)
        run.findings.append(ready_finding(instance, evidence, deferred=True))

    enforced = set(outcome.enforced)
    left_open = [facts for facts in optional if facts.instance_id not in enforced and not is_exempt(facts, settings)]
    if settings.SET_ACCOUNT_DEFAULT:
        _account_default(run, deployment, left_open=len(left_open), rejected=rejected)
    skipped_sources = _check_sources(run, should_stop)

    totals = {
        "instances_scanned": len(optional),
        "optional_remaining": len(optional) - len(enforced) + rolled_back,
        "enforced": len(enforced),
        "deferred": len(outcome.deferred),
        "watched": len(watched),
        "rejected": rejected,
        "rolled_back": rolled_back,
        "modify_wait_seconds": round(run.pacer.waited_seconds),
        "source_checks_skipped": skipped_sources,
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
    message_ids = (
        publish_report(
            report,
            topic_arn=settings.REPORT_TOPIC_ARN,
            central_topic_arn=settings.CENTRAL_REPORT_TOPIC_ARN,
            organizational_unit=settings.ORGANIZATIONAL_UNIT,
        )
        if publish
        else []
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


def _fetch_usage(optional: list[InstanceFacts], watched: list[InstanceFacts], run: _Run) -> dict[str, MetadataUsage]:
    """Both metrics in one query list, so that the calls stay at ceil(queries / 500)."""
    requests = [MetricRequest(facts.instance_id, NO_TOKEN) for facts in optional]
    requests += [MetricRequest(facts.instance_id, NO_TOKEN_REJECTED) for facts in watched]
    lookback = UsageWindow.ending_at(run.now, run.settings.LOOKBACK_DAYS)
    start = min(lookback.start, watch_window(run.now, run.settings).start)
    series = cloudwatch.fetch_series(requests, start=start, end=lookback.end) if requests else {}
    usage: dict[str, MetadataUsage] = {}
    for facts in (*optional, *watched):
        if facts.instance_id in usage:
            continue
        usage[facts.instance_id] = MetadataUsage(
            instance_id=facts.instance_id,
            no_token=_series(series, facts.instance_id, NO_TOKEN),
            no_token_rejected=_series(series, facts.instance_id, NO_TOKEN_REJECTED),
        )
    return usage


def _series(found: Mapping[MetricRequest, MetricSeries], instance_id: str, metric: str) -> MetricSeries:
    series = found.get(MetricRequest(instance_id, metric))
    return MetricSeries() if series is None else series


def _watch(watched: list[InstanceFacts], usage: dict[str, MetadataUsage], run: _Run) -> tuple[int, int]:
    """Report (and opt-in roll back) enforced instances that reject IMDSv1 calls. Returns (rejected, rolled back).

    An instance that is optional again (rolled back before, or set back by a person) is not reported again: the
    optional sweep reports it. Its rejections still count, so the account default waits for the watch to end.
    """
    rejected = rolled_back = 0
    for facts in watched:
        calls = rejected_calls(facts, usage[facts.instance_id])
        if calls == 0:
            continue
        rejected += 1
        if facts.accepts_imdsv1:
            logger.info("rejections on an instance that is optional again", extra={"instance_id": facts.instance_id})
            continue
        finding = rejected_finding(facts, calls)
        if run.settings.ROLLBACK_ON_REJECTED and _roll_back(facts, calls, finding, run):
            rolled_back += 1
            continue
        run.findings.append(finding)
    return rejected, rolled_back


def _roll_back(facts: InstanceFacts, calls: float, finding: Finding, run: _Run) -> bool:
    """Exempt first, then optional: if the second call fails, the tag still keeps the gate from re-enforcing it,
    and the next run (still rejected, still required) tries again."""
    operation = "CreateTags"
    try:
        ec2.tag_instances([facts.instance_id], {run.settings.EXEMPT_TAG_KEY: rollback_tag_value(calls, now=run.now)})
        operation = "ModifyInstanceMetadataOptions"
        run.pacer.acquire()
        ec2.allow_tokens_optional(facts.instance_id)
    except AwsError as error:
        run.findings.append(error.finding(facts.instance_id, f"rollback: {operation}"))
        if not error.expected:
            run.unexpected.append(f"rollback {operation} {facts.instance_id}: {error.code}")
        return False
    run.findings.append(
        finding.model_copy(
            update={
                "action": Action.ROLLED_BACK,
                "reason": finding.reason + f"; set back to optional and tagged {run.settings.EXEMPT_TAG_KEY}",
            }
        )
    )
    return True


def _decide(optional: list[InstanceFacts], usage: dict[str, MetadataUsage], run: _Run) -> list[ModifyPlan]:
    plans: list[ModifyPlan] = []
    for facts in optional:
        decision = gate_decision(facts, usage[facts.instance_id], run.settings, now=run.now)
        if isinstance(decision, Finding):
            run.findings.append(decision)
        elif isinstance(decision, ModifyPlan):
            plans.append(decision)
        else:
            logger.info("nothing to do", extra={"instance_id": facts.instance_id, "tokens": facts.http_tokens})
    return plans


def _account(deployment: Deployment) -> dict[str, Any]:
    """Who an account-level finding is about."""
    return {"resource_type": ACCOUNT_RESOURCE, "resource_id": deployment.account}


def _account_default(run: _Run, deployment: Deployment, *, left_open: int, rejected: int) -> None:
    """Require IMDSv2 for new launches once the region is clean: no optional instance left but exempt ones,
    and nothing rejected in the watch period. A default set by a declarative policy is reported, not fought."""
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
                "would be set to required (flag mode, left unchanged)",
                details=details,
            )
        )
        return
    try:
        ec2.require_tokens_by_default()
    except AwsError as error:
        run.findings.append(error.finding(deployment.account, resource_type=ACCOUNT_RESOURCE))
        return
    run.findings.append(
        Finding(
            **_account(deployment),
            action=Action.ENFORCED,
            reason=f"no instance accepts IMDSv1 but exempt ones: account default HttpTokens set from {tokens} to "
            "required for new launches (HttpTokensEnforced left as it is)",
            details={**details, "http_tokens": "required", "previous_http_tokens": str(tokens)},
        )
    )

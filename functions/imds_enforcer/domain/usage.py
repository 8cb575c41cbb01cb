"""Usage evidence and the usage gate's decisions: pure functions of facts, no boto3, no os.environ.

The evidence is the CloudWatch metric `AWS/EC2 MetadataNoToken` (IMDSv1 calls per instance) over a look-back window;
a reference metric EC2 publishes for every running instance (`CPUUtilization`, basic monitoring) says on which days
the instance ran; and, for instances the service already enforced, `MetadataNoTokenRejected` (IMDSv1 calls refused
since then).

The window is rolling, not calendar-based: it ends at the next full hour after `now` and reaches back a whole
number of days, so it is cut into `days` slices of 24 hours. A running day is a slice in which the reference metric
(or MetadataNoToken itself) has a datapoint. A running day without a MetadataNoToken datapoint is missing evidence,
never zero use: EC2 publishes `MetadataNoToken` for a running instance even when it is 0 (and if it did not, a quiet
instance would show here as missing evidence, which is the safe reading).

The gate enforces an instance only when all of these hold:
- it does not carry the exemption tag;
- no datapoint in the window is nonzero (any IMDSv1 call blocks it, however old, however small);
- it was first launched before the window began (its first launch, not its last start: a restart is not a launch);
- it ran on at least MIN_RUNNING_DAYS days of the window (an instance stopped most of the time has no evidence);
- MetadataNoToken has data on at least ceil(COVERAGE_MIN_RATIO * running days) of the days it ran;
- IMDSv1 calls were not rejected since the service last required IMDSv2 on it (someone set it back to optional
  after its workload broke: that stands until the software is fixed or the instance is exempted).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import (
    CONTAINER_HOP_LIMIT,
    ModifyPlan,
    PreparePlan,
    exempt_finding,
    instance_container_reason,
    is_exempt,
    modify_plan,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, Settings

HOUR_SECONDS = 3600
DAY_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """[start, end): `days` whole days ending at the next full hour after `now` (hour-aligned for CloudWatch)."""

    start: datetime
    end: datetime

    @classmethod
    def ending_at(cls, now: datetime, days: int) -> UsageWindow:
        now = now.astimezone(UTC)
        floor = now.replace(minute=0, second=0, microsecond=0)
        end = floor if floor == now else floor + timedelta(hours=1)
        return cls(start=end - timedelta(days=days), end=end)

    @property
    def days(self) -> int:
        return int((self.end - self.start).total_seconds()) // DAY_SECONDS

    def day_of(self, epoch_seconds: float) -> int | None:
        """Index of the day slice that holds this time, or None when it lies outside the window."""
        offset = epoch_seconds - self.start.timestamp()
        if offset < 0 or epoch_seconds >= self.end.timestamp():
            return None
        return int(offset // DAY_SECONDS)


@dataclass(frozen=True, slots=True, eq=False)
class MetricSeries:
    """One metric's datapoints for one instance, as CloudWatch returned them (bucket start, Sum).

    Compact on purpose (16 bytes a point): a 10,000-instance sweep holds about 1.7 million of them.
    Only buckets with data are present; a gap is missing evidence.
    """

    timestamps: array[float] = field(default_factory=lambda: array("d"))  # epoch seconds
    values: array[float] = field(default_factory=lambda: array("d"))
    period: int = HOUR_SECONDS  # seconds each bucket spans

    @classmethod
    def of(cls, points: Iterable[tuple[datetime, float]], *, period: int = HOUR_SECONDS) -> MetricSeries:
        series = cls(period=period)
        for timestamp, value in points:
            series.append(timestamp, value)
        return series

    def append(self, timestamp: datetime, value: float) -> None:
        self.timestamps.append(timestamp.timestamp())
        self.values.append(float(value))

    def __len__(self) -> int:
        return len(self.values)

    def points(self) -> Iterator[tuple[float, float]]:
        return zip(self.timestamps, self.values, strict=True)


@dataclass(frozen=True, slots=True)
class MetadataUsage:
    """What CloudWatch says about one instance's use of IMDSv1."""

    instance_id: str
    no_token: MetricSeries = field(default_factory=MetricSeries)
    # The reference metric (CPUUtilization datapoints): EC2 publishes it only while the instance runs.
    running: MetricSeries = field(default_factory=MetricSeries)
    # Only fetched for instances under watch after the service enforced them.
    no_token_rejected: MetricSeries = field(default_factory=MetricSeries)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The usage series read against a window."""

    days: int
    running_days: int  # days with the reference metric or MetadataNoToken data: the days the instance ran
    days_with_data: int  # days with MetadataNoToken data (each of them a running day)
    calls: float  # sum of MetadataNoToken in the window
    last_call_at: datetime | None  # start of the last bucket with a nonzero value

    @property
    def used_imdsv1(self) -> bool:
        return self.calls != 0 or self.last_call_at is not None


def read_evidence(usage: MetadataUsage, window: UsageWindow) -> Evidence:
    covered: set[int] = set()
    calls = 0.0
    last_call: float | None = None
    for timestamp, value in usage.no_token.points():
        day = window.day_of(timestamp)
        if day is None:
            continue
        covered.add(day)
        # NaN != 0 too: an unreadable value never passes as zero use.
        if value != 0:
            calls += value
            last_call = timestamp if last_call is None else max(last_call, timestamp)
    running = set(covered)
    for timestamp, _ in usage.running.points():
        day = window.day_of(timestamp)
        if day is not None:
            running.add(day)
    return Evidence(
        days=window.days,
        running_days=len(running),
        days_with_data=len(covered),
        calls=calls,
        last_call_at=None if last_call is None else datetime.fromtimestamp(last_call, UTC),
    )


def required_days(days: int, ratio: float) -> int:
    # round() first so that 0.9 * 10 is 9 and not 9.000000000000002 -> 10.
    return max(1, math.ceil(round(ratio * days, 9)))


def gate_decision(
    instance: InstanceFacts,
    usage: MetadataUsage,
    settings: Settings,
    *,
    now: datetime,
    prepare_container_hosts: bool | None = None,
) -> Finding | ModifyPlan | PreparePlan | None:
    """What the usage gate does with one instance: nothing (already required or gone), a finding, or a change.

    The launch watch decides a restarted instance with the same rules (`prepare_container_hosts=False`: only the
    gate prepares container hosts). A container host proven quiet keeps its hop limit.
    """
    if instance.gone or not instance.accepts_imdsv1:
        return None
    if is_exempt(instance, settings):
        return exempt_finding(instance, settings)
    window = UsageWindow.ending_at(now, settings.LOOKBACK_DAYS)
    rejected = rejected_calls(instance, usage)
    if rejected:
        return set_back_finding(instance, rejected)
    evidence = read_evidence(usage, window)
    if evidence.used_imdsv1:
        blocked = _blocked_finding(instance, evidence, window)
        prepare = settings.PREPARE_CONTAINER_HOSTS if prepare_container_hosts is None else prepare_container_hosts
        container = instance_container_reason(instance, settings)
        if prepare and settings.fix and container and instance.hop_limit < CONTAINER_HOP_LIMIT:
            return PreparePlan(
                instance=instance,
                finding=_prepared_finding(blocked, container),
                exempt_tag_key=settings.EXEMPT_TAG_KEY,
            )
        return blocked
    missing = _missing_evidence(instance, evidence, window, settings)
    if missing:
        return Finding(
            resource_id=instance.instance_id,
            action=Action.INSUFFICIENT_DATA,
            reason="; ".join(missing) + ": zero IMDSv1 use is not proven",
            details={
                "state": instance.state,
                "running_days": str(evidence.running_days),
                "days_with_data": str(evidence.days_with_data),
                "days_in_window": str(evidence.days),
            },
        )
    if not settings.fix:
        return ready_finding(instance, evidence)
    return modify_plan(instance, settings, raise_container_hop=False, why=_proof(evidence))


def _blocked_finding(instance: InstanceFacts, evidence: Evidence, window: UsageWindow) -> Finding:
    last = f"; the latest in the interval starting {_stamp(evidence.last_call_at)}" if evidence.last_call_at else ""
    return Finding(
        resource_id=instance.instance_id,
        action=Action.BLOCKED,
        reason=f"{evidence.calls:g} IMDSv1 calls in the last {window.days} days{last}: "
        "update the software that makes them before IMDSv2 can be required",
        metadata_no_token=evidence.calls,
        last_imdsv1_call_at=evidence.last_call_at,
        details={"state": instance.state, "hop_limit": str(instance.hop_limit)},
    )


def _prepared_finding(blocked: Finding, container: str) -> Finding:
    return blocked.model_copy(
        update={
            "action": Action.PREPARED,
            "reason": f"container host ({container}) with {blocked.reason.split(':', 1)[0]} at hop limit 1: hop "
            f"limit raised to {CONTAINER_HOP_LIMIT}, HttpTokens left optional, so the SDKs in its containers can "
            "get IMDSv2 tokens instead of falling back to IMDSv1; the gate requires IMDSv2 once the following "
            "windows show no IMDSv1 calls",
            "details": {**blocked.details, "hop_limit": str(CONTAINER_HOP_LIMIT), "previous_hop_limit": "1"},
        }
    )


def set_back_finding(instance: InstanceFacts, rejected: float, *, set_back_by: str | None = None) -> Finding:
    """An instance set back to optional after the service required IMDSv2 and IMDSv1 calls were rejected: the
    person who restored the workload is right until the software is fixed, so it is reported, not re-enforced."""
    stamp = enforced_at(instance)
    who = f" by {set_back_by}" if set_back_by else ""
    details = {"state": instance.state, "enforced_at": _stamp(stamp), "set_back": "after_rejections"}
    if set_back_by:
        details["set_back_by"] = set_back_by
    return Finding(
        resource_id=instance.instance_id,
        action=Action.FLAGGED,
        reason=f"set back to optional{who} after {rejected:g} IMDSv1 calls were rejected since IMDSv2 was required "
        f"at {_stamp(stamp)}: left optional (not re-enforced). The way out: fix the software that calls IMDSv1 "
        "(the gate then requires IMDSv2 once MetadataNoToken stays at zero), or tag the instance "
        "with the exemption tag",
        metadata_no_token_rejected=rejected,
        details=details,
    )


def _proof(evidence: Evidence) -> str:
    return (
        f"no IMDSv1 calls; it ran on {evidence.running_days} of {evidence.days} days, MetadataNoToken has data on "
        f"{evidence.days_with_data} of them"
    )


def ready_finding(instance: InstanceFacts, evidence: Evidence, *, deferred: bool = False) -> Finding:
    proof = _proof(evidence)
    if deferred:
        return Finding(
            resource_id=instance.instance_id,
            action=Action.READY,
            reason=f"{proof}; deferred to the next run: time budget",
            details={"state": instance.state, "deferred": "true"},
        )
    return Finding(
        resource_id=instance.instance_id,
        action=Action.READY,
        reason=f"{proof}: ready to require IMDSv2 (flag mode, left unchanged)",
        details={"state": instance.state},
    )


def _missing_evidence(
    instance: InstanceFacts, evidence: Evidence, window: UsageWindow, settings: Settings
) -> list[str]:
    missing: list[str] = []
    first = instance.first_launch_time
    if first is None:
        missing.append("first launch unknown (no primary network interface or root volume attach time)")
    elif first >= window.start:
        missing.append(
            f"first launched {_stamp(first)}, after the {window.days}-day window began ({_stamp(window.start)})"
        )
    if evidence.running_days < settings.MIN_RUNNING_DAYS:
        ran = f"ran on {evidence.running_days} of {evidence.days} days (needs {settings.MIN_RUNNING_DAYS})"
        if instance.state == "stopped":
            ran += "; it is stopped, and a stopped instance sends no metrics"
        else:
            ran += ": stopped most of the window, so there is too little to read"
        missing.append(ran)
    needed = required_days(evidence.running_days, settings.COVERAGE_MIN_RATIO)
    if evidence.running_days and evidence.days_with_data < needed:
        missing.append(
            f"MetadataNoToken has data on {evidence.days_with_data} of the {evidence.running_days} days it ran "
            f"(needs {needed})"
        )
    return missing


# The watch after the switch.


def enforced_at(instance: InstanceFacts) -> datetime | None:
    """When the service enforced this instance (its tag), or None when untagged or unreadable."""
    value = instance.tags.get(ENFORCED_AT_TAG, "")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def watch_window(now: datetime, settings: Settings) -> UsageWindow:
    return UsageWindow.ending_at(now, settings.WATCH_DAYS)


def under_watch(instance: InstanceFacts, settings: Settings, *, now: datetime) -> bool:
    stamp = enforced_at(instance)
    return stamp is not None and stamp >= watch_window(now, settings).start and not instance.gone


def rejected_calls(instance: InstanceFacts, usage: MetadataUsage) -> float:
    """Sum of MetadataNoTokenRejected since the enforcement. The bucket holding that moment counts: an instance
    that still accepted IMDSv1 rejected nothing, so whatever it holds happened after the switch."""
    stamp = enforced_at(instance)
    if stamp is None:
        return 0.0
    series = usage.no_token_rejected
    since = stamp.timestamp() - series.period  # bucket start + period > enforcement time
    total = 0.0
    for timestamp, value in series.points():
        if timestamp > since and value != 0:
            total += value
    return total


def rejected_finding(instance: InstanceFacts, rejected: float, *, since: str | None = None) -> Finding:
    """IMDSv1 calls rejected on an instance that requires IMDSv2: something on it still needs IMDSv1.

    `since` names the period for instances this service did not switch (required at launch or by the account
    default), whose rejections are read over the last hours rather than since an enforcement."""
    stamp = enforced_at(instance)
    enforced_by = instance.tags.get(ENFORCED_BY_TAG, "")
    if since is None:
        when = f"since IMDSv2 was required at {_stamp(stamp)}"
    elif stamp is not None:
        when = f"{since} (IMDSv2 required by this service at {_stamp(stamp)})"
    else:
        when = f"{since} (IMDSv2 not required by this service: at launch or by the account default)"
    return Finding(
        resource_id=instance.instance_id,
        action=Action.REJECTED,
        reason=f"{rejected:g} IMDSv1 calls rejected {when}: something on it still needs IMDSv1",
        metadata_no_token_rejected=rejected,
        details={"enforced_at": _stamp(stamp), "enforced_by": enforced_by or "not this service"},
    )


def rollback_tag_value(rejected: float, *, now: datetime) -> str:
    return f"rolled back {now.astimezone(UTC):%Y-%m-%d}: {rejected:g} IMDSv1 calls rejected"


def _stamp(moment: datetime | None) -> str:
    return "unknown" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deferred_finding(plan: ModifyPlan, *, because: str = "time budget") -> Finding:
    """A planned enforcement the sweep did not get to: `ready` (it would be enforced and was not), with the evidence
    the plan was made on and why it waits for the next scheduled sweep."""
    return Finding(
        resource_id=plan.instance_id,
        action=Action.READY,
        reason=f"{plan.why}; deferred to the next run: {because}",
        details={"state": plan.instance.state, "deferred": "true"},
    )

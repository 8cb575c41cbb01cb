"""Usage evidence and the usage gate's decisions: pure functions of facts, no boto3, no os.environ.

The evidence is the CloudWatch metric `AWS/EC2 MetadataNoToken` (IMDSv1 calls per instance) over a look-back window,
and, for instances the service already enforced, `MetadataNoTokenRejected` (IMDSv1 calls refused since then).

The window is rolling, not calendar-based: it ends at the next full hour after `now` and reaches back a whole
number of days, so it is cut into `days` slices of 24 hours. Coverage counts the slices that hold at least one
datapoint. A slice without a datapoint is missing evidence, never zero use: EC2 publishes `MetadataNoToken` for a
running instance even when it is 0, so silence means a stopped instance, a metric outage or too short a history.

The gate enforces an instance only when all of these hold:
- it does not carry the exemption tag;
- no datapoint in the window is nonzero (any IMDSv1 call blocks it, however old, however small);
- it launched before the window began (its LaunchTime is reset at every start, so a restart inside the window
  also counts as too little history: conservative on purpose);
- datapoints cover at least ceil(COVERAGE_MIN_RATIO * days) of the window's days.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan, exempt_finding, is_exempt, modify_plan
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
    # Only fetched for instances under watch after the service enforced them.
    no_token_rejected: MetricSeries = field(default_factory=MetricSeries)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The usage series read against a window."""

    days: int
    days_with_data: int
    calls: float  # sum of MetadataNoToken in the window
    last_call_at: datetime | None  # start of the last bucket with a nonzero value

    @property
    def used_imdsv1(self) -> bool:
        return self.calls != 0 or self.last_call_at is not None


def read_evidence(series: MetricSeries, window: UsageWindow) -> Evidence:
    covered: set[int] = set()
    calls = 0.0
    last_call: float | None = None
    for timestamp, value in series.points():
        day = window.day_of(timestamp)
        if day is None:
            continue
        covered.add(day)
        # NaN != 0 too: an unreadable value never passes as zero use.
        if value != 0:
            calls += value
            last_call = timestamp if last_call is None else max(last_call, timestamp)
    return Evidence(
        days=window.days,
        days_with_data=len(covered),
        calls=calls,
        last_call_at=None if last_call is None else datetime.fromtimestamp(last_call, UTC),
    )


def required_days(days: int, ratio: float) -> int:
    # round() first so that 0.9 * 10 is 9 and not 9.000000000000002 -> 10.
    return max(1, math.ceil(round(ratio * days, 9)))


def gate_decision(
    instance: InstanceFacts, usage: MetadataUsage, settings: Settings, *, now: datetime
) -> Finding | ModifyPlan | None:
    """What the usage gate does with one instance: nothing (already required or gone), a finding, or a modify."""
    if instance.gone or not instance.accepts_imdsv1:
        return None
    if is_exempt(instance, settings):
        return exempt_finding(instance, settings)
    window = UsageWindow.ending_at(now, settings.LOOKBACK_DAYS)
    evidence = read_evidence(usage.no_token, window)
    if evidence.used_imdsv1:
        last = f"; the latest in the interval starting {_stamp(evidence.last_call_at)}" if evidence.last_call_at else ""
        return Finding(
            resource_id=instance.instance_id,
            action=Action.BLOCKED,
            reason=f"{evidence.calls:g} IMDSv1 calls in the last {window.days} days{last}: "
            "update the software that makes them before IMDSv2 can be required",
            metadata_no_token=evidence.calls,
            last_imdsv1_call_at=evidence.last_call_at,
            details={"state": instance.state},
        )
    missing = _missing_evidence(instance, evidence, window, settings)
    if missing:
        return Finding(
            resource_id=instance.instance_id,
            action=Action.INSUFFICIENT_DATA,
            reason="; ".join(missing) + ": zero IMDSv1 use is not proven",
            details={
                "state": instance.state,
                "days_with_data": str(evidence.days_with_data),
                "days_in_window": str(evidence.days),
            },
        )
    if not settings.fix:
        return ready_finding(instance, evidence)
    return modify_plan(instance, settings)


def ready_finding(instance: InstanceFacts, evidence: Evidence, *, deferred: bool = False) -> Finding:
    proof = f"no IMDSv1 calls with data on {evidence.days_with_data} of {evidence.days} days"
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
    if instance.launch_time is None:
        missing.append("launch time unknown")
    elif instance.launch_time >= window.start:
        missing.append(
            f"launched {_stamp(instance.launch_time)}, after the {window.days}-day window began "
            f"({_stamp(window.start)})"
        )
    needed = required_days(evidence.days, settings.COVERAGE_MIN_RATIO)
    if evidence.days_with_data < needed:
        gap = f"data on {evidence.days_with_data} of {evidence.days} days (needs {needed})"
        if instance.state == "stopped":
            gap += "; a stopped instance sends no metrics"
        missing.append(gap)
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


def rejected_finding(instance: InstanceFacts, rejected: float) -> Finding:
    stamp = enforced_at(instance)
    return Finding(
        resource_id=instance.instance_id,
        action=Action.REJECTED,
        reason=f"{rejected:g} IMDSv1 calls rejected since IMDSv2 was required at {_stamp(stamp)}: "
        "something on it still needs IMDSv1",
        metadata_no_token_rejected=rejected,
        details={"enforced_at": _stamp(stamp), "enforced_by": instance.tags.get(ENFORCED_BY_TAG, "")},
    )


def rollback_tag_value(rejected: float, *, now: datetime) -> str:
    return f"rolled back {now.astimezone(UTC):%Y-%m-%d}: {rejected:g} IMDSv1 calls rejected"


def _stamp(moment: datetime | None) -> str:
    return "unknown" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

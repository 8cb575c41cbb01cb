"""The usage gate's decision (usage.gate_decision): the safety rules as properties, plus the wording of findings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_enforcer.aws.cloudwatch import plan_batches
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan, PreparePlan
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, Settings
from imds_enforcer.domain.usage import (
    MetadataUsage,
    MetricSeries,
    UsageWindow,
    gate_decision,
    rejected_calls,
    required_days,
    rollback_tag_value,
)

NOW = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)
FIX = Settings(ENFORCEMENT_MODE="fix")
FLAG = Settings()


def instance(
    *,
    tags: dict[str, str] | None = None,
    launched: datetime | None = NOW - timedelta(days=60),
    last_start: datetime | None = None,
    state: str = "running",
    hop_limit: int = 1,
    image_name: str = "",
) -> InstanceFacts:
    """`launched` is the first launch (primary interface attach time); `last_start` the LaunchTime (a restart)."""
    return InstanceFacts(
        instance_id="i-0123456789abcdef0",
        state=state,
        http_tokens="optional",
        hop_limit=hop_limit,
        http_endpoint="enabled",
        tags=tags or {},
        launch_time=last_start or launched,
        first_launch_time=launched,
        image_name=image_name,
    )


def daily(
    values: list[float | None], *, running: list[bool] | None = None, now: datetime = NOW, days: int = 14
) -> MetadataUsage:
    """values[i] is the MetadataNoToken Sum in the 2-hour bucket at the start of day slice i of the window (None: no
    data); running[i] whether the reference metric (CPUUtilization) has data that day (default: no reference data,
    so the running days are the days with MetadataNoToken data)."""
    window = UsageWindow.ending_at(now, days)
    points = [(window.start + timedelta(days=i), v) for i, v in enumerate(values) if v is not None]
    reference = [(window.start + timedelta(days=i, hours=1), 1.0) for i, ran in enumerate(running or []) if ran]
    return MetadataUsage(
        instance_id="i-0123456789abcdef0",
        no_token=MetricSeries.of(points, period=7200),
        running=MetricSeries.of(reference, period=7200),
    )


# Strategies: a day is either missing (None) or a Sum; a share of zero sums keeps interesting cases frequent.
day_value = st.one_of(st.none(), st.just(0.0), st.floats(min_value=0, max_value=1e6, allow_nan=False))
day_values = st.lists(day_value, min_size=14, max_size=14)
running_days = st.lists(st.booleans(), min_size=14, max_size=14)
launch_offsets = st.floats(min_value=-30, max_value=90)  # days before NOW; negative: in the future (clock skew)
extra_tags = st.dictionaries(
    st.sampled_from(["Name", "team", "eks:cluster-name", "imdsv2-exempt"]), st.text(max_size=8)
)
ratios = st.sampled_from([0.5, 0.9, 1.0])
modes = st.sampled_from(["flag", "fix"])
min_running = st.sampled_from([1, 7, 14])


def covered(values: list[float | None]) -> int:
    return sum(value is not None for value in values)


def ran(values: list[float | None], running: list[bool]) -> int:
    return sum(value is not None or up for value, up in zip(values, running, strict=True))


@settings(max_examples=400, deadline=None)
@given(
    values=day_values,
    running=running_days,
    launched_days_ago=launch_offsets,
    tags=extra_tags,
    ratio=ratios,
    mode=modes,
    minimum=min_running,
)
def test_enforces_only_with_full_proof(
    values: list[float | None],
    running: list[bool],
    launched_days_ago: float,
    tags: dict[str, str],
    ratio: float,
    mode: str,
    minimum: int,
) -> None:
    # Given any usage series, running days, first launch, tags, coverage ratio and minimum of running days
    config = Settings(ENFORCEMENT_MODE=mode, COVERAGE_MIN_RATIO=ratio, MIN_RUNNING_DAYS=minimum)
    facts = instance(tags=tags, launched=NOW - timedelta(days=launched_days_ago), last_start=NOW - timedelta(hours=2))
    # When the gate decides
    decision = gate_decision(facts, daily(values, running=running), config, now=NOW)
    # Then a modify is planned only when every safety rule holds, however recently it was (re)started
    window = UsageWindow.ending_at(NOW, 14)
    if isinstance(decision, ModifyPlan):
        assert mode == "fix"
        assert "imdsv2-exempt" not in tags
        assert all(not value for value in values if value is not None)
        assert ran(values, running) >= minimum
        assert covered(values) >= required_days(ran(values, running), ratio)
        assert facts.first_launch_time is not None
        assert facts.first_launch_time < window.start
        assert decision.hop_limit is None  # a proven-quiet container host keeps its hop limit
    else:
        # And otherwise there is always a finding (or, for a container host in fix mode, a preparation) that says why
        assert isinstance(decision, Finding | PreparePlan)


@settings(max_examples=200, deadline=None)
@given(values=day_values, tags=extra_tags)
def test_any_call_blocks_unless_exempt(values: list[float | None], tags: dict[str, str]) -> None:
    # Given a series with at least one nonzero datapoint
    values = [*values[:-1], 1.0]
    # When the gate decides in fix mode
    decision = gate_decision(instance(tags=tags), daily(values), FIX, now=NOW)
    # Then it is exempt, or it is never enforced: blocked with the window's sum (a container host at hop limit 1 is
    # prepared instead, carrying the same sum)
    if isinstance(decision, PreparePlan):
        assert "eks:cluster-name" in tags
        decision = decision.finding
    assert isinstance(decision, Finding)
    if "imdsv2-exempt" in tags:
        assert decision.action is Action.EXEMPT
    else:
        assert decision.action in (Action.BLOCKED, Action.PREPARED)
        assert decision.metadata_no_token == pytest.approx(sum(v for v in values if v))


@settings(max_examples=200, deadline=None)
@given(missing=st.sets(st.integers(min_value=0, max_value=13), min_size=2), ratio=ratios)
def test_missing_days_of_a_running_instance_are_never_zero(missing: set[int], ratio: float) -> None:
    # Given an instance that ran every day, with zero use on some days and no MetadataNoToken data on the others
    values: list[float | None] = [None if day in missing else 0.0 for day in range(14)]
    # When the gate decides in fix mode
    decision = gate_decision(
        instance(),
        daily(values, running=[True] * 14),
        Settings(ENFORCEMENT_MODE="fix", COVERAGE_MIN_RATIO=ratio),
        now=NOW,
    )
    # Then it enforces only when the covered days reach the ratio of the days it ran, and otherwise says how many
    if 14 - len(missing) >= required_days(14, ratio):
        assert isinstance(decision, ModifyPlan)
    else:
        assert isinstance(decision, Finding)
        assert decision.action is Action.INSUFFICIENT_DATA
        assert f"MetadataNoToken has data on {14 - len(missing)} of the 14 days it ran" in decision.reason


def test_a_weekday_only_instance_qualifies_on_the_days_it_ran() -> None:
    # Given an instance first launched months ago that runs on weekdays only (10 of 14 days), zero use on each of them,
    # restarted this morning (so its LaunchTime is an hour old)
    weekdays = [day % 7 not in (5, 6) for day in range(14)]
    values: list[float | None] = [0.0 if up else None for up in weekdays]
    facts = instance(launched=NOW - timedelta(days=120), last_start=NOW - timedelta(hours=1))
    # When the gate decides in fix mode
    decision = gate_decision(facts, daily(values, running=weekdays), FIX, now=NOW)
    # Then the weekends are not missing evidence and the last start does not count as a launch: it is enforced
    assert isinstance(decision, ModifyPlan)


def test_an_instance_stopped_most_of_the_window_is_insufficient_in_words() -> None:
    # Given an old instance that ran on 3 days only, quiet on each
    running = [day in (0, 5, 9) for day in range(14)]
    values: list[float | None] = [0.0 if up else None for up in running]
    # When the gate decides
    decision = gate_decision(instance(), daily(values, running=running), FIX, now=NOW)
    # Then it is insufficient data and the reason says it ran on 3 of 14 days
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "ran on 3 of 14 days (needs 7): stopped most of the window" in decision.reason
    assert decision.details["running_days"] == "3"


def test_a_running_instance_without_metadata_no_token_data_is_missing_evidence_not_zero() -> None:
    # Given an instance the reference metric shows running every day, but MetadataNoToken with no data at all (as it
    # would read if EC2 published it only when IMDS is called)
    decision = gate_decision(instance(), daily([None] * 14, running=[True] * 14), FIX, now=NOW)
    # Then it is insufficient data, and the reason says what is missing
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "MetadataNoToken has data on 0 of the 14 days it ran (needs 13)" in decision.reason


@settings(max_examples=100, deadline=None)
@given(launched_days_ago=st.floats(min_value=-5, max_value=13.9), mode=modes)
def test_first_launched_inside_the_window_is_never_enforced(launched_days_ago: float, mode: str) -> None:
    # Given a perfect zero series, but an instance first launched after the window began
    facts = instance(launched=NOW - timedelta(days=launched_days_ago))
    # When the gate decides
    decision = gate_decision(facts, daily([0.0] * 14), Settings(ENFORCEMENT_MODE=mode), now=NOW)
    # Then it is insufficient data, naming the first launch
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "after the 14-day window began" in decision.reason


@settings(max_examples=100, deadline=None)
@given(
    launched_days_ago=st.floats(min_value=15, max_value=400),
    tags=st.dictionaries(st.sampled_from(["Name", "team"]), st.text(max_size=5)),
)
def test_fully_covered_zero_use_is_enforced_in_fix_mode_and_ready_in_flag_mode(
    launched_days_ago: float, tags: dict[str, str]
) -> None:
    # Given an instance older than the window with a zero datapoint on every day
    facts = instance(tags=tags, launched=NOW - timedelta(days=launched_days_ago))
    usage = daily([0.0] * 14)
    # When the gate decides in each mode
    fixed = gate_decision(facts, usage, FIX, now=NOW)
    flagged = gate_decision(facts, usage, FLAG, now=NOW)
    # Then fix mode plans the modify and flag mode only reports it ready
    assert isinstance(fixed, ModifyPlan)
    assert fixed.instance_id == facts.instance_id
    assert isinstance(flagged, Finding)
    assert flagged.action is Action.READY


def test_exempt_wins_over_everything() -> None:
    # Given an exempt instance with a perfect record
    facts = instance(tags={"imdsv2-exempt": "legacy agent, INC-42"})
    # When the gate decides in fix mode
    decision = gate_decision(facts, daily([0.0] * 14), FIX, now=NOW)
    # Then it is exempt and the tag's value is in the reason
    assert isinstance(decision, Finding)
    assert decision.action is Action.EXEMPT
    assert "legacy agent, INC-42" in decision.reason


def test_blocked_carries_sum_and_last_call() -> None:
    # Given calls 2 and 9 days before the window's end (day slices 11 and 4), zeros elsewhere
    values: list[float | None] = [0.0] * 14
    values[4], values[11] = 5.0, 2.5
    # When the gate decides
    decision = gate_decision(instance(), daily(values), FIX, now=NOW)
    # Then the sum and the start of the last nonzero bucket are reported
    window = UsageWindow.ending_at(NOW, 14)
    assert isinstance(decision, Finding)
    assert decision.action is Action.BLOCKED
    assert decision.metadata_no_token == 7.5
    assert decision.last_imdsv1_call_at == window.start + timedelta(days=11)
    assert decision.reason.startswith("7.5 IMDSv1 calls in the last 14 days")


def test_datapoints_outside_the_window_do_not_count() -> None:
    # Given a call 20 days ago (before the 14-day window) and zero use on every day of the window
    window = UsageWindow.ending_at(NOW, 14)
    points = [(window.start - timedelta(days=6), 4.0)] + [(window.start + timedelta(days=i), 0.0) for i in range(14)]
    usage = MetadataUsage("i-0123456789abcdef0", no_token=MetricSeries.of(points))
    # When the gate decides in fix mode
    decision = gate_decision(instance(), usage, FIX, now=NOW)
    # Then the old call no longer blocks it
    assert isinstance(decision, ModifyPlan)


def test_insufficient_data_names_everything_missing() -> None:
    # Given a stopped instance first launched 3 days ago that ran on 3 days, with MetadataNoToken data on 2
    facts = instance(launched=NOW - timedelta(days=3), state="stopped")
    usage = daily([0.0, 0.0] + [None] * 12, running=[True] * 3 + [False] * 11)
    # When the gate decides
    decision = gate_decision(facts, usage, FIX, now=NOW)
    # Then the reason names the first launch, the running days, the coverage and why a stopped instance has none
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert (
        "first launched 2026-11-17T12:34:56Z, after the 14-day window began (2026-11-06T13:00:00Z)" in decision.reason
    )
    assert "ran on 3 of 14 days (needs 7); it is stopped, and a stopped instance sends no metrics" in decision.reason
    assert "MetadataNoToken has data on 2 of the 3 days it ran (needs 3)" in decision.reason
    assert decision.details["days_with_data"] == "2"


def test_unknown_first_launch_is_insufficient() -> None:
    decision = gate_decision(instance(launched=None), daily([0.0] * 14), FIX, now=NOW)
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "first launch unknown" in decision.reason


def test_required_or_gone_instances_need_nothing() -> None:
    long_ago = NOW - timedelta(days=60)
    required = InstanceFacts("i-1", "running", "required", 2, "enabled", first_launch_time=long_ago)
    gone = InstanceFacts("i-2", "terminated", "optional", 1, "enabled", first_launch_time=long_ago)
    assert gate_decision(required, daily([0.0] * 14), FIX, now=NOW) is None
    assert gate_decision(gone, daily([1.0] * 14), FIX, now=NOW) is None


@pytest.mark.parametrize(
    ("tags", "image_name"),
    [
        ({"eks:cluster-name": "prod"}, ""),
        ({}, "amazon-eks-node-al2023-x86_64-standard-1.31-v20250123"),
        ({}, "bottlerocket-aws-k8s-1.30-x86_64-v1.20.5-1234abcd"),
        ({}, "al2023-ami-ecs-hvm-2023.0.20241115-kernel-6.1-x86_64"),
    ],
)
def test_a_quiet_container_host_is_enforced_keeping_its_hop_limit(tags: dict[str, str], image_name: str) -> None:
    # Given a container host (by tag or by AMI family) at hop limit 1 with no IMDSv1 call in the window
    facts = instance(tags=tags, image_name=image_name)
    # When the gate decides in fix mode
    decision = gate_decision(facts, daily([0.0] * 14), FIX, now=NOW)
    # Then tokens are required and the hop limit stays 1: nothing reached IMDS through the extra hop
    assert isinstance(decision, ModifyPlan)
    assert decision.hop_limit is None


@pytest.mark.parametrize(
    ("tags", "image_name"),
    [({"kubernetes.io/cluster/prod": "owned"}, ""), ({}, "amzn2-ami-ecs-hvm-2.0.20240611-x86_64-ebs")],
)
def test_a_container_host_calling_imdsv1_at_hop_limit_one_is_prepared_in_fix_mode(
    tags: dict[str, str], image_name: str
) -> None:
    # Given a container host at hop limit 1 that made IMDSv1 calls (its pods' SDKs fall back: no token across the hop)
    facts = instance(tags=tags, image_name=image_name)
    usage = daily([0.0] * 13 + [6.0])
    # When the gate decides
    fixed = gate_decision(facts, usage, FIX, now=NOW)
    flagged = gate_decision(facts, usage, FLAG, now=NOW)
    not_prepared = gate_decision(facts, usage, Settings(ENFORCEMENT_MODE="fix", PREPARE_CONTAINER_HOSTS=False), now=NOW)
    at_two = gate_decision(instance(tags=tags, image_name=image_name, hop_limit=2), usage, FIX, now=NOW)
    # Then fix mode prepares it (hop limit 2, tokens optional), carrying the evidence; otherwise it is blocked
    assert isinstance(fixed, PreparePlan)
    assert fixed.finding.action is Action.PREPARED
    assert fixed.finding.metadata_no_token == 6.0
    assert "hop limit raised to 2, HttpTokens left optional" in fixed.finding.reason
    for other in (flagged, not_prepared, at_two):
        assert isinstance(other, Finding)
        assert other.action is Action.BLOCKED


def test_set_back_after_rejections_is_not_re_enforced() -> None:
    # Given an instance the service enforced, whose IMDSv1 calls were then rejected, set back to optional since
    facts = instance(tags={ENFORCED_AT_TAG: "2026-11-15T08:00:00Z", ENFORCED_BY_TAG: "usage_gate"})
    usage = daily([0.0] * 14)
    rejected = MetricSeries.of([(datetime(2026, 11, 15, 10, tzinfo=UTC), 12.0)], period=7200)
    usage = MetadataUsage(usage.instance_id, no_token=usage.no_token, no_token_rejected=rejected)
    # When the gate decides in fix mode (its MetadataNoToken reads zero: the calls were rejected, not answered)
    decision = gate_decision(facts, usage, FIX, now=NOW)
    # Then it is reported, with the count and the way out, and not enforced again
    assert isinstance(decision, Finding)
    assert decision.action is Action.FLAGGED
    assert decision.metadata_no_token_rejected == 12.0
    assert "not re-enforced" in decision.reason
    assert "tag the instance with the exemption tag" in decision.reason


@pytest.mark.parametrize(
    ("days", "ratio", "needed"), [(14, 0.9, 13), (10, 0.9, 9), (14, 1.0, 14), (1, 0.5, 1), (7, 0.5, 4)]
)
def test_required_days(days: int, ratio: float, needed: int) -> None:
    assert required_days(days, ratio) == needed


def test_window_is_whole_days_ending_on_the_next_hour() -> None:
    window = UsageWindow.ending_at(NOW, 14)
    assert window.end == datetime(2026, 11, 20, 13, tzinfo=UTC)
    assert window.start == datetime(2026, 11, 6, 13, tzinfo=UTC)
    assert window.days == 14
    assert UsageWindow.ending_at(datetime(2026, 11, 20, 13, tzinfo=UTC), 1).end == datetime(
        2026, 11, 20, 13, tzinfo=UTC
    )


def test_rejections_count_from_the_enforcement_bucket_on() -> None:
    # Given an instance enforced at 10:30 and rejected-call buckets (2 h) before, around and after
    facts = instance(tags={ENFORCED_AT_TAG: "2026-11-18T10:30:00Z"})
    points = [
        (datetime(2026, 11, 18, 6, tzinfo=UTC), 9.0),  # ends 08:00, before the switch
        (datetime(2026, 11, 18, 10, tzinfo=UTC), 2.0),  # holds the switch
        (datetime(2026, 11, 19, 0, tzinfo=UTC), 3.0),
    ]
    usage = MetadataUsage("i-0123456789abcdef0", no_token_rejected=MetricSeries.of(points, period=7200))
    # Then only the buckets that end after the switch count
    assert rejected_calls(facts, usage) == 5.0
    assert rejected_calls(instance(), usage) == 0.0  # never enforced by us
    assert rollback_tag_value(5.0, now=NOW) == "rolled back 2026-11-20: 5 IMDSv1 calls rejected"


@pytest.mark.parametrize(
    ("days", "period", "per_call"),
    [
        (1, 3600, 500),
        (8, 3600, 500),
        (9, 7200, 500),
        (14, 7200, 500),
        (63, 28800, 500),
        (200, 86400, 500),
        (455, 86400, 221),
    ],
)
def test_batch_plan_keeps_a_full_call_in_one_page(days: int, period: int, per_call: int) -> None:
    plan = plan_batches(days * 86400)
    assert (plan.period, plan.queries_per_call) == (period, per_call)
    assert 86400 % plan.period == 0
    assert plan.period % 3600 == 0
    assert plan.queries_per_call * (days * 86400 // plan.period + 1) <= 100_800

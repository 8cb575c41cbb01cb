"""The usage gate's decision (usage.gate_decision): the safety rules as properties, plus the wording of findings."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_enforcer.aws.cloudwatch import plan_batches
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
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
    *, tags: dict[str, str] | None = None, launched: datetime | None = NOW - timedelta(days=60), state: str = "running"
) -> InstanceFacts:
    return InstanceFacts(
        instance_id="i-0123456789abcdef0",
        state=state,
        http_tokens="optional",
        hop_limit=1,
        http_endpoint="enabled",
        tags=tags or {},
        launch_time=launched,
    )


def daily(values: list[float | None], *, now: datetime = NOW, days: int = 14) -> MetadataUsage:
    """values[i] is the Sum in the 2-hour bucket at the start of day slice i of the window; None: no data."""
    window = UsageWindow.ending_at(now, days)
    points = [(window.start + timedelta(days=i), v) for i, v in enumerate(values) if v is not None]
    return MetadataUsage(instance_id="i-0123456789abcdef0", no_token=MetricSeries.of(points, period=7200))


# Strategies: a day is either missing (None) or a Sum; a share of zero sums keeps interesting cases frequent.
day_value = st.one_of(st.none(), st.just(0.0), st.floats(min_value=0, max_value=1e6, allow_nan=False))
day_values = st.lists(day_value, min_size=14, max_size=14)
launch_offsets = st.floats(min_value=-30, max_value=90)  # days before NOW; negative: in the future (clock skew)
extra_tags = st.dictionaries(
    st.sampled_from(["Name", "team", "eks:cluster-name", "imdsv2-exempt"]), st.text(max_size=8)
)
ratios = st.sampled_from([0.5, 0.9, 1.0])
modes = st.sampled_from(["flag", "fix"])


def covered(values: list[float | None]) -> int:
    return sum(value is not None for value in values)


@settings(max_examples=400, deadline=None)
@given(values=day_values, launched_days_ago=launch_offsets, tags=extra_tags, ratio=ratios, mode=modes)
def test_enforces_only_with_full_proof(
    values: list[float | None], launched_days_ago: float, tags: dict[str, str], ratio: float, mode: str
) -> None:
    # Given any usage series, launch time, tags and coverage ratio
    config = Settings(ENFORCEMENT_MODE=mode, COVERAGE_MIN_RATIO=ratio)
    facts = instance(tags=tags, launched=NOW - timedelta(days=launched_days_ago))
    # When the gate decides
    decision = gate_decision(facts, daily(values), config, now=NOW)
    # Then a modify is planned only when every safety rule holds
    window = UsageWindow.ending_at(NOW, 14)
    if isinstance(decision, ModifyPlan):
        assert mode == "fix"
        assert "imdsv2-exempt" not in tags
        assert all(not value for value in values if value is not None)
        assert covered(values) >= math.ceil(ratio * 14 - 1e-9)
        assert facts.launch_time is not None
        assert facts.launch_time < window.start
    else:
        # And otherwise there is always a finding that says why (the gate only sees optional instances)
        assert isinstance(decision, Finding)


@settings(max_examples=200, deadline=None)
@given(values=day_values, tags=extra_tags)
def test_any_call_blocks_unless_exempt(values: list[float | None], tags: dict[str, str]) -> None:
    # Given a series with at least one nonzero datapoint
    values = [*values[:-1], 1.0]
    # When the gate decides in fix mode
    decision = gate_decision(instance(tags=tags), daily(values), FIX, now=NOW)
    # Then it is blocked with the window's sum, or exempt
    assert isinstance(decision, Finding)
    if "imdsv2-exempt" in tags:
        assert decision.action is Action.EXEMPT
    else:
        assert decision.action is Action.BLOCKED
        assert decision.metadata_no_token == pytest.approx(sum(v for v in values if v))


@settings(max_examples=200, deadline=None)
@given(missing=st.sets(st.integers(min_value=0, max_value=13), min_size=2), ratio=ratios)
def test_missing_days_are_never_zero(missing: set[int], ratio: float) -> None:
    # Given zero use on some days and no data at all on the others
    values: list[float | None] = [None if day in missing else 0.0 for day in range(14)]
    # When the gate decides in fix mode
    decision = gate_decision(
        instance(), daily(values), Settings(ENFORCEMENT_MODE="fix", COVERAGE_MIN_RATIO=ratio), now=NOW
    )
    # Then it enforces only when the covered days reach the ratio, and otherwise says how many days have data
    if 14 - len(missing) >= required_days(14, ratio):
        assert isinstance(decision, ModifyPlan)
    else:
        assert isinstance(decision, Finding)
        assert decision.action is Action.INSUFFICIENT_DATA
        assert f"data on {14 - len(missing)} of 14 days" in decision.reason


@settings(max_examples=100, deadline=None)
@given(launched_days_ago=st.floats(min_value=-5, max_value=13.9), mode=modes)
def test_launched_inside_the_window_is_never_enforced(launched_days_ago: float, mode: str) -> None:
    # Given a perfect zero series, but an instance launched after the window began
    facts = instance(launched=NOW - timedelta(days=launched_days_ago))
    # When the gate decides
    decision = gate_decision(facts, daily([0.0] * 14), Settings(ENFORCEMENT_MODE=mode), now=NOW)
    # Then it is insufficient data, naming the launch
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
    # Given a stopped instance launched 3 days ago with data on 2 days
    facts = instance(launched=NOW - timedelta(days=3), state="stopped")
    # When the gate decides
    decision = gate_decision(facts, daily([0.0, 0.0] + [None] * 12), FIX, now=NOW)
    # Then the reason names the launch, the coverage and why a stopped instance has none
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "launched 2026-11-17T12:34:56Z, after the 14-day window began (2026-11-06T13:00:00Z)" in decision.reason
    assert "data on 2 of 14 days (needs 13)" in decision.reason
    assert "stopped instance sends no metrics" in decision.reason
    assert decision.details["days_with_data"] == "2"


def test_unknown_launch_time_is_insufficient() -> None:
    decision = gate_decision(instance(launched=None), daily([0.0] * 14), FIX, now=NOW)
    assert isinstance(decision, Finding)
    assert decision.action is Action.INSUFFICIENT_DATA
    assert "launch time unknown" in decision.reason


def test_required_or_gone_instances_need_nothing() -> None:
    required = InstanceFacts("i-1", "running", "required", 2, "enabled", launch_time=NOW - timedelta(days=60))
    gone = InstanceFacts("i-2", "terminated", "optional", 1, "enabled", launch_time=NOW - timedelta(days=60))
    assert gate_decision(required, daily([0.0] * 14), FIX, now=NOW) is None
    assert gate_decision(gone, daily([1.0] * 14), FIX, now=NOW) is None


def test_container_host_gets_hop_limit_two() -> None:
    facts = instance(tags={"eks:cluster-name": "prod"})
    decision = gate_decision(facts, daily([0.0] * 14), FIX, now=NOW)
    assert isinstance(decision, ModifyPlan)
    assert decision.hop_limit == 2


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

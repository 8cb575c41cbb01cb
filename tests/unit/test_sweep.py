"""The usage gate's sweep across runs, in the domain: the continuation event, the saved state, the re-check of a plan
on the live instance, and the one report that ties the runs of a sweep together."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from imds_enforcer.domain.events import (
    CONTINUATION_DETAIL_TYPE,
    CONTINUATION_SOURCE,
    GateTrigger,
    Ignored,
    continuation_event,
    read_gate_event,
)
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan, PreparePlan, Recheck, recheck_modify, recheck_prepare
from imds_enforcer.domain.report import Action, Finding, Report, render_messages
from imds_enforcer.domain.sweep import PLAN_MAX_AGE, FactsRecord, PlanRecord, SweepState, stale_plans_undecided

ACCOUNT = "123456789012"
NOW = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
FACTS = InstanceFacts(
    instance_id="i-0123456789abcdef0",
    state="running",
    http_tokens="optional",
    hop_limit=1,
    http_endpoint="enabled",
    tags={"team": "payments"},
    launch_time=NOW - timedelta(days=3),
    first_launch_time=NOW - timedelta(days=40),
    image_id="ami-0abc",
    image_name="amazon-eks-node-1.30-v20260101",
)
PLAN = ModifyPlan(instance=FACTS, hop_limit=2, container_reason="tag eks", why="quiet", exempt_tag_key="imdsv2-exempt")


# The continuation event.


def test_the_continuation_event_reads_back_as_the_run_it_starts() -> None:
    event = continuation_event(account=ACCOUNT, region="us-east-1", sweep_id="20261102T060000Z-ab12", run=3, at=NOW)
    assert read_gate_event(event, account=ACCOUNT) == GateTrigger(
        kind="continuation", event_id="20261102T060000Z-ab12-run-3", sweep_id="20261102T060000Z-ab12", run=3
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"account": "210987654321"}, "from account 210987654321"),
        ({"detail": {"sweep_id": "../../etc", "run": 2}}, "no valid sweep id"),
        ({"detail": {"sweep_id": "s", "run": 1}}, "no valid run number"),
        ({"detail": {"sweep_id": "s", "run": True}}, "no valid run number"),
        ({"detail": {"sweep_id": "s", "run": "2"}}, "no valid run number"),
        ({"detail": "nothing"}, "no valid sweep id"),
    ],
)
def test_a_bad_continuation_is_ignored_with_a_reason(change: dict[str, object], reason: str) -> None:
    event = {**continuation_event(account=ACCOUNT, region="us-east-1", sweep_id="s", run=2, at=NOW), **change}
    ignored = read_gate_event(event, account=ACCOUNT)
    assert isinstance(ignored, Ignored)
    assert reason in ignored.reason


def test_only_our_own_source_and_detail_type_make_a_continuation() -> None:
    event = continuation_event(account=ACCOUNT, region="us-east-1", sweep_id="s", run=2, at=NOW)
    assert isinstance(read_gate_event({**event, "source": "aws.events"}, account=ACCOUNT), Ignored)
    assert event["source"] == CONTINUATION_SOURCE
    assert event["detail-type"] == CONTINUATION_DETAIL_TYPE


# The saved state.


def test_the_state_round_trips_through_json_with_every_fact_and_plan() -> None:
    prepared = Finding(resource_id=FACTS.instance_id, action=Action.PREPARED, reason="hop limit raised")
    state = SweepState(
        sweep_id="s",
        started_at=NOW,
        mode="fix",
        undecided=[FactsRecord.of(FACTS)],
        to_enforce=[PlanRecord.of_modify(PLAN, decided_at=NOW)],
        to_prepare=[
            PlanRecord.of_prepare(PreparePlan(instance=FACTS, finding=prepared, exempt_tag_key="x"), decided_at=NOW)
        ],
        findings=[prepared],
        totals={"enforced": 3},
    )
    again = SweepState.model_validate_json(state.model_dump_json())
    assert again == state
    assert again.undecided[0].facts() == FACTS
    assert again.to_enforce[0].modify_plan() == PLAN
    assert again.to_prepare[0].prepare_plan() == PreparePlan(instance=FACTS, finding=prepared, exempt_tag_key="x")
    assert again.next_run == 1
    assert again.work_left


def test_plans_decided_too_long_ago_are_decided_again() -> None:
    fresh = PlanRecord.of_modify(PLAN, decided_at=NOW - PLAN_MAX_AGE + timedelta(minutes=1))
    stale = PlanRecord.of_modify(
        replace(PLAN, instance=replace(FACTS, instance_id="i-stale")),
        decided_at=NOW - PLAN_MAX_AGE - timedelta(seconds=1),
    )
    state = SweepState(sweep_id="s", started_at=NOW, mode="fix", to_enforce=[fresh, stale])
    assert stale_plans_undecided(state, NOW) == 1
    assert state.to_enforce == [fresh]
    assert [record.instance_id for record in state.undecided] == ["i-stale"]


# The re-check just before the modify.


def test_recheck_lets_the_plan_go_on_the_live_facts() -> None:
    live = replace(FACTS, state="stopped", tags={"team": "payments", "new": "tag"})
    checked = recheck_modify(PLAN, live)
    assert checked == replace(PLAN, instance=live)


@pytest.mark.parametrize(
    ("live", "skip", "action"),
    [
        (None, "gone", None),
        (replace(FACTS, state="terminated"), "gone", None),
        (replace(FACTS, http_tokens="required"), "already_required", None),
        (replace(FACTS, tags={"imdsv2-exempt": "vendor"}), "exempt", Action.EXEMPT),
    ],
)
def test_recheck_skips_what_moved_since_the_plan(live: InstanceFacts | None, skip: str, action: Action | None) -> None:
    checked = recheck_modify(PLAN, live)
    assert isinstance(checked, Recheck)
    assert checked.skip == skip
    assert (checked.finding.action if checked.finding else None) == action


def test_recheck_never_lowers_a_hop_limit_raised_since() -> None:
    checked = recheck_modify(PLAN, replace(FACTS, hop_limit=3))
    assert isinstance(checked, ModifyPlan)
    assert checked.hop_limit is None
    assert checked.container_reason is None


def test_recheck_of_a_preparation_skips_a_host_already_at_hop_limit_two() -> None:
    plan = PreparePlan(instance=FACTS, finding=Finding(resource_id="i", action=Action.PREPARED, reason="r"))
    assert recheck_prepare(plan, replace(FACTS, hop_limit=2)) == Recheck(skip="already_prepared")
    assert recheck_prepare(plan, FACTS) == plan


# One report per sweep.


def test_every_part_of_a_sweeps_report_carries_its_id_and_the_subject_tells_the_runs() -> None:
    findings = [
        Finding(resource_id=f"i-{index:017x}", action=Action.ENFORCED, reason="x" * 400) for index in range(2000)
    ]
    report = Report(
        account=ACCOUNT,
        region="us-east-1",
        trigger="gate",
        mode="fix",
        sweep_id="20261102T060000Z-ab12",
        totals={"runs": 3, "sweep_seconds": 2041},
        findings=findings,
    )
    messages = render_messages(report, max_bytes=200_000)
    assert len(messages) > 1
    assert {message.attributes["sweep_id"] for message in messages} == {"20261102T060000Z-ab12"}
    assert all('"sweep_id":"20261102T060000Z-ab12"' in message.body for message in messages)
    assert messages[0].subject.startswith("IMDSv2: 2000 enforced over 3 runs in 34 min in 123456789012/us-east-1")


def test_a_report_without_a_sweep_has_no_sweep_attribute() -> None:
    report = Report(
        account=ACCOUNT,
        region="us-east-1",
        trigger="launch",
        mode="fix",
        findings=[Finding(resource_id="i-1", action=Action.ENFORCED, reason="r")],
    )
    (message,) = render_messages(report)
    assert "sweep_id" not in message.attributes
    assert "runs" not in message.subject

"""The usage gate's continuation end to end on moto: a fleet that takes several runs, each run's time budget spent by
its modifies, the continuation created through EventBridge Scheduler's API and the next run started from what it
carries, until the sweep's one report."""

from __future__ import annotations

import math
import re
from typing import Any

import boto3
import pytest

from emulator.fleet import backdate_launch, create_ledger_table
from imds_enforcer.aws import clients, sweep_store
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.domain.settings import ENFORCED_BY_TAG
from imds_enforcer.handlers.usage_gate import handler
from tests.support.aws import SCHEDULED, ReportInbox, launch, metadata_options, tags_of
from tests.support.continuation import (
    DEAD_LETTER_ARN,
    ROLE_ARN,
    BudgetContext,
    ModifyLog,
    deploy_continuation,
    fire_next,
    pending_schedules,
    saved_sweep,
)
from tests.support.faults import Fault, count_calls, inject, rest_json_error

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("aws")]

FLEET = 200
PER_RUN = 30  # modifies a run's time budget fits
LOOKBACK = 7


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch, inbox: ReportInbox) -> ModifyLog:
    """Fix mode, the continuation deployed, a fast documented rate (the pacing is the benchmark's business), a
    7-day window (moto's GetMetricData cost grows with every stored datapoint)."""
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("MODIFY_RATE_PER_SECOND", "100")
    monkeypatch.setenv("LOOKBACK_DAYS", str(LOOKBACK))
    monkeypatch.setenv("MIN_RUNNING_DAYS", str(LOOKBACK))
    deploy_continuation(monkeypatch)
    return ModifyLog().attach(clients.ec2_paced())


def ready_fleet(count: int) -> list[str]:
    """`count` optional instances, first launched 30 days ago, with zero IMDSv1 calls on each day of the window."""
    from datetime import UTC, datetime, timedelta

    ids = launch(count=count)
    backdate_launch(ids, 30)
    now = datetime.now(UTC)
    cloudwatch = boto3.client("cloudwatch")
    data: list[Any] = [
        {
            "MetricName": metric,
            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
            "Timestamp": now - timedelta(days=day, hours=3),
            "Value": value,
        }
        for instance_id in ids
        for day in range(LOOKBACK)
        for metric, value in (("MetadataNoToken", 0.0), ("CPUUtilization", 4.0))
    ]
    for start in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=data[start : start + 1000])
    return ids


def run(event: dict[str, Any], log: ModifyLog, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One invocation, as Lambda would make it with reserved concurrency 1: it ends before the next one starts."""
    assert all("ended" in earlier for earlier in runs), "a run started while another was running"
    record: dict[str, Any] = {"event": event}
    runs.append(record)
    summary = handler(event, BudgetContext(log, modifies=PER_RUN))
    record["ended"] = True
    record["summary"] = summary
    return summary


def test_a_sweep_continues_until_every_ready_instance_is_enforced_and_reports_once(
    gate: ModifyLog, inbox: ReportInbox
) -> None:
    # Given 200 ready instances and runs whose time budget fits 30 modifies each
    ids = ready_fleet(FLEET)
    metric_calls = count_calls(clients.cloudwatch())
    runs: list[dict[str, Any]] = []

    # When the schedule starts a sweep, and each continuation is fired from what its schedule carries
    first = run(SCHEDULED, gate, runs)
    fired = []
    while (continuation := fire_next()) is not None:
        fired.append(continuation)
        # each continuation invokes this very function, through the stack's role, failing into its dead-letter queue
        target = continuation.schedule["Target"]
        assert target["Arn"] == BudgetContext(gate, modifies=0).invoked_function_arn
        assert target["RoleArn"] == ROLE_ARN
        assert target["DeadLetterConfig"] == {"Arn": DEAD_LETTER_ARN}
        assert continuation.schedule["ActionAfterCompletion"] == "DELETE"
        assert re.fullmatch(r"at\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\)", continuation.schedule["ScheduleExpression"])
        assert continuation.schedule["ScheduleExpressionTimezone"] == "UTC"
        run(continuation.event, gate, runs)

    # Then the sweep took ceil(200 / 30) = 7 runs, each continuation started the next run number of the same sweep
    expected_runs = math.ceil(FLEET / PER_RUN)
    assert first["status"] == "continued"
    assert [record["summary"]["status"] for record in runs] == ["continued"] * (expected_runs - 1) + ["processed"]
    assert [c.event["detail"]["run"] for c in fired] == list(range(2, expected_runs + 1))
    assert {c.event["detail"]["sweep_id"] for c in fired} == {first["sweep_id"]}
    # And every ready instance was modified exactly once, and requires IMDSv2 now, tagged by the gate
    assert sorted(gate.per_instance) == sorted(ids)
    assert set(gate.per_instance.values()) == {1}
    assert all(metadata_options(instance_id)["HttpTokens"] == "required" for instance_id in ids)
    assert tags_of(ids[-1])[ENFORCED_BY_TAG] == "usage_gate"
    # And the evidence was read once per sweep: ceil(2 x 200 / 500) GetMetricData calls, not once per run
    assert metric_calls.counts["GetMetricData"] == math.ceil(2 * FLEET / 500)
    # And one report for the whole sweep, tied to it by its id, with the runs it took
    (message,) = inbox.drain()
    report = message.report
    assert report["sweep_id"] == first["sweep_id"] == message.attributes["sweep_id"]
    assert report["counts"] == {"enforced": FLEET}
    assert report["totals"]["enforced"] == FLEET
    assert report["totals"]["runs"] == expected_runs
    assert report["totals"]["continuations"] == expected_runs - 1
    assert report["totals"]["optional_remaining"] == 0
    assert report["totals"]["deferred"] == 0
    assert f"over {expected_runs} runs" in message.subject
    # And nothing is left behind: no pending schedule, no saved sweep
    assert pending_schedules() == []
    assert saved_sweep() is None


def test_the_world_moves_between_runs_and_each_change_is_rechecked_just_before_its_modify(
    gate: ModifyLog, inbox: ReportInbox
) -> None:
    # Given a sweep that needs two runs
    ids = ready_fleet(2 * PER_RUN)
    first = run(SCHEDULED, gate, runs := [])
    state = saved_sweep()
    assert first["status"] == "continued"
    assert state is not None
    left = [plan["instance"]["instance_id"] for plan in state["to_enforce"]] + [
        facts["instance_id"] for facts in state["undecided"]
    ]
    assert len(left) == len(ids) - PER_RUN
    # When, before the continuation runs, someone tags one of the rest exempt, someone else requires IMDSv2 on another,
    # and a third is terminated
    exempt, done, gone = left[0], left[1], left[2]
    ec2 = boto3.client("ec2")
    ec2.create_tags(Resources=[exempt], Tags=[{"Key": "imdsv2-exempt", "Value": "vendor appliance"}])
    ec2.modify_instance_metadata_options(InstanceId=done, HttpTokens="required")
    ec2.terminate_instances(InstanceIds=[gone])
    continuation = fire_next()
    assert continuation is not None
    run(continuation.event, gate, runs)

    # Then the continuation modifies none of them: the exempt one stays optional and is reported exempt, the one
    # already required is not reported as enforced by the gate, the terminated one is left alone
    assert metadata_options(exempt)["HttpTokens"] == "optional"
    assert {exempt, done, gone}.isdisjoint(gate.per_instance)
    (message,) = inbox.drain()
    findings = {finding["resource_id"]: finding for finding in message.report["findings"]}
    assert findings[exempt]["action"] == "exempt"
    assert "exempted after the gate planned its change" in findings[exempt]["reason"]
    assert done not in findings
    assert gone not in findings
    totals = message.report["totals"]
    assert totals["enforced"] == len(ids) - 3
    assert totals["already_required"] == 1
    assert totals["gone"] == 1


def test_a_schedule_during_a_sweep_continues_it_and_the_stale_continuation_changes_nothing(
    gate: ModifyLog, inbox: ReportInbox
) -> None:
    # Given a sweep in progress with its continuation pending
    ids = ready_fleet(3 * PER_RUN)
    runs: list[dict[str, Any]] = []
    first = run(SCHEDULED, gate, runs)
    pending = fire_next()
    assert pending is not None

    # When the 6-hourly schedule fires before the continuation does, then the continuation, then one delivered twice
    adopted = run({**SCHEDULED, "id": "later-schedule"}, gate, runs)
    stale = run(pending.event, gate, runs)
    duplicate = run(pending.event, gate, runs)
    while (continuation := fire_next()) is not None:
        run(continuation.event, gate, runs)

    # Then the schedule carried on with the same sweep (no second sweep pacing against the first), the stale and the
    # duplicate continuation did nothing, and every instance was modified once, in one report
    assert adopted["sweep_id"] == first["sweep_id"]
    assert adopted["run"] == 2
    assert stale["status"] == duplicate["status"] == "ignored"
    assert "already done" in stale["reason"]
    assert set(gate.per_instance.values()) == {1}
    assert sorted(gate.per_instance) == sorted(ids)
    (message,) = inbox.drain()
    assert message.report["sweep_id"] == first["sweep_id"]
    assert message.report["totals"]["enforced"] == len(ids)
    assert saved_sweep() is None


def test_the_continuations_are_bounded_and_the_rest_is_reported_deferred(
    gate: ModifyLog, inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given at most one continuation per sweep, and a fleet that would need three runs
    monkeypatch.setenv("MAX_CONTINUATIONS", "1")
    ids = ready_fleet(3 * PER_RUN)
    runs: list[dict[str, Any]] = []

    # When the sweep runs
    run(SCHEDULED, gate, runs)
    continuation = fire_next()
    assert continuation is not None
    last = run(continuation.event, gate, runs)

    # Then the second run is the last: it reports the rest ready and deferred, and schedules nothing
    assert last["status"] == "processed"
    assert pending_schedules() == []
    (message,) = inbox.drain()
    totals = message.report["totals"]
    assert totals["runs"] == 2
    assert totals["continuations"] == 1
    assert totals["enforced"] == 2 * PER_RUN
    assert totals["deferred"] == len(ids) - 2 * PER_RUN
    deferred = [f for f in message.report["findings"] if f["action"] == "ready"]
    assert len(deferred) == totals["deferred"]
    assert all(f["details"]["deferred"] == "true" for f in deferred)
    assert saved_sweep() is None


def test_a_continuation_that_cannot_be_scheduled_ends_the_sweep_with_its_report(
    gate: ModifyLog, inbox: ReportInbox
) -> None:
    # Given a sweep that needs more than one run, and EventBridge Scheduler refusing to create its continuation
    ids = ready_fleet(2 * PER_RUN + 10)
    inject(clients.scheduler(), "CreateSchedule", Fault(rest_json_error("AccessDeniedException", status=403)))

    # When the first run stops for its time budget
    with pytest.raises(UnexpectedAwsError, match="CreateSchedule"):
        run(SCHEDULED, gate, [])

    # Then nothing is lost: what it enforced and what it left are in the sweep's one report (published before the
    # error is raised for Lambda's retry and the dead-letter queue), and no saved sweep is left to report them twice
    (message,) = inbox.drain()
    findings = {finding["resource_id"]: finding for finding in message.report["findings"]}
    assert set(findings) == set(ids)
    enforced = [i for i in ids if findings[i]["action"] == "enforced"]
    assert len(enforced) == PER_RUN
    left = [findings[i] for i in ids if i not in enforced]
    assert {f["action"] for f in left} <= {"ready", "insufficient_data"}
    assert all(f["details"]["deferred"] == "true" for f in left)
    assert message.report["totals"]["deferred"] == len(left)
    assert pending_schedules() == []
    assert saved_sweep() is None


def test_a_sweep_over_several_runs_settles_every_switch_its_report_carries(
    gate: ModifyLog, inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the stack's state table, and a fleet that takes two runs
    table = create_ledger_table("imds-enforcer-state")
    monkeypatch.setenv("LEDGER_TABLE_NAME", table)
    ids = ready_fleet(PER_RUN + 10)
    runs: list[dict[str, Any]] = []

    # When the sweep runs to its end: each run records its switches the moment it makes them
    first = run(SCHEDULED, gate, runs)
    assert first["status"] == "continued"
    assert len(open_switch_ids(table)) == PER_RUN  # the first run's switches wait for the sweep's report
    while (continuation := fire_next()) is not None:
        run(continuation.event, gate, runs)

    # Then the one report carries every switch, and settles every record, the first run's included
    (message,) = inbox.drain()
    assert message.report["totals"]["enforced"] == len(ids)
    assert open_switch_ids(table) == []
    # And the next sweep reports none of them again as late: it has nothing to report at all
    again = run({**SCHEDULED, "id": "next-sweep"}, gate, runs)
    assert again["status"] == "processed"
    assert again["totals"]["reported_late"] == 0
    assert again["totals"]["enforced"] == 0
    assert inbox.drain() == []


def test_the_switches_of_a_run_killed_before_it_saved_are_in_the_sweeps_report(
    gate: ModifyLog, inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the stack's state table, a fleet that takes three runs, and a second run killed (its timeout) after its
    # modifies and before it saved the sweep
    monkeypatch.setenv("LEDGER_TABLE_NAME", create_ledger_table("imds-enforcer-state"))
    ids = ready_fleet(2 * PER_RUN + 10)
    runs: list[dict[str, Any]] = []
    run(SCHEDULED, gate, runs)
    second = fire_next()
    assert second is not None
    saves = sweep_store.save

    def killed(bucket: str, state_json: str) -> int:
        raise TimeoutError("Task timed out after 900.00 seconds")

    monkeypatch.setattr(sweep_store, "save", killed)
    with pytest.raises(TimeoutError):
        run(second.event, gate, runs)
    killed_run = sorted(gate.calls[PER_RUN : 2 * PER_RUN])
    monkeypatch.setattr(sweep_store, "save", saves)

    # When Lambda retries that run with the same event, and the sweep goes on to its end
    runs[-1]["ended"] = True
    run(second.event, gate, runs)
    while (continuation := fire_next()) is not None:
        run(continuation.event, gate, runs)

    # Then the retry found the killed run's instances already required and changed nothing twice, and the sweep's
    # one report still says each of them was enforced, once, as reported late
    assert set(gate.per_instance.values()) == {1}
    assert sorted(gate.per_instance) == sorted(ids)
    (message,) = inbox.drain()
    enforced = [f for f in message.report["findings"] if f["action"] == "enforced"]
    assert sorted(f["resource_id"] for f in enforced) == sorted(ids)
    late = sorted(f["resource_id"] for f in enforced if f.get("details", {}).get("reported_late") == "true")
    assert late == killed_run
    assert message.report["totals"]["reported_late"] == PER_RUN


def open_switch_ids(table: str) -> list[str]:
    """The instances whose switch record is still open (the sparse `pending` index)."""
    pages = (
        boto3.client("dynamodb")
        .get_paginator("query")
        .paginate(
            TableName=table,
            IndexName="pending",
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": "pending"},
            ExpressionAttributeValues={":p": {"S": "switch"}},
        )
    )
    return sorted(item["instance_id"]["S"] for page in pages for item in page.get("Items", []))

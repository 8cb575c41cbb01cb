"""Every switch reported and watched, under moto with the stack's state table: a switch is logged and recorded the
moment it is made; a report that cannot be published is logged in full and reported by the retry or the gate's next
sweep; an untagged switch is tagged again and watched from its record; overlapping runs report one switch; a refusal
by a policy is reported once a run and never sends the gate to the dead-letter queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from emulator.fleet import backdate_launch, create_ledger_table
from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG
from imds_enforcer.handlers import launch_watch, usage_gate
from tests.support.aws import SCHEDULED, ReportInbox, launch, metadata_options, queue_batch, state_change_event, tags_of
from tests.support.context import FakeLambdaContext
from tests.support.faults import Fault, connection_error, ec2_error, inject
from tests.support.metrics import put_daily, put_points

pytestmark = pytest.mark.usefixtures("aws", "retry_delays")

TABLE = "imds-enforcer-state"
CLEAN = [0.0] * 14
# Every send of a call: botocore's first send and its 5 retries.
SENDS_PER_CALL = 6


@pytest.fixture
def fix_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")


@pytest.fixture
def table(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LEDGER_TABLE_NAME", create_ledger_table(TABLE))
    return TABLE


def record_of(instance_id: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = (
        boto3.client("dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": f"switch#{instance_id}"}}).get("Item")
    )
    return item


def age_record(instance_id: str, minutes: float) -> None:
    """Move a switch record's time back, as if its run had happened `minutes` ago."""
    item = record_of(instance_id)
    assert item is not None
    item["enforced_epoch"] = {"N": str((datetime.now(UTC) - timedelta(minutes=minutes)).timestamp())}
    boto3.client("dynamodb").put_item(TableName=TABLE, Item=item)


def ready_instance() -> str:
    (instance_id,) = launch()
    backdate_launch([instance_id], 30)
    put_daily(instance_id, CLEAN)
    return instance_id


def enforced_ids(inbox: ReportInbox) -> list[str]:
    return [f["resource_id"] for m in inbox.drain() for f in m.findings if f["action"] == "enforced"]


def switch_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.switch for record in caplog.records if hasattr(record, "switch")]


@pytest.mark.usefixtures("fix_mode", "table")
def test_each_switch_is_logged_and_recorded_then_settled_once_reported_and_tagged(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    [instance_id] = launch()
    event = state_change_event(instance_id)

    launch_watch.handler(event, lambda_context)

    # One structured line, written as the switch was made
    [line] = switch_lines(caplog)
    assert (line["instance_id"], line["enforced_by"], line["event_id"]) == (instance_id, "launch_watch", event["id"])
    assert line["enforced_at"] == tags_of(instance_id)[ENFORCED_AT_TAG]
    # And the record, reported and tagged, has left the index of open switches
    record = record_of(instance_id)
    assert record is not None
    assert (record["reported"]["BOOL"], record["tagged"]["BOOL"]) == (True, True)
    assert "pending" not in record
    assert enforced_ids(inbox) == [instance_id]


@pytest.mark.usefixtures("fix_mode", "table")
def test_each_switch_of_a_batch_is_recorded_under_the_event_that_named_it(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two launches, one `running` event each, gathered by the queue into one batch
    caplog.set_level(logging.INFO)
    ids = launch(count=2)
    events = [state_change_event(instance_id) for instance_id in ids]
    batch = queue_batch(events)

    # When the launch watch switches both in one enforcement
    launch_watch.handler(batch, lambda_context)

    # Then each switch's log line and record name its own event (a retry of that event finds it)
    named = {instance_id: event["id"] for instance_id, event in zip(ids, events, strict=True)}
    assert {line["instance_id"]: line["event_id"] for line in switch_lines(caplog)} == named
    assert {i: (record_of(i) or {}).get("event_id", {}).get("S") for i in ids} == named
    assert sorted(enforced_ids(inbox)) == sorted(ids)


@pytest.mark.usefixtures("fix_mode", "table")
def test_an_unpublished_report_is_logged_in_full_and_the_retry_reports_the_switch(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, caplog: pytest.LogCaptureFixture
) -> None:
    # Given SNS unreachable for the whole first attempt (every send of its one publish)
    caplog.set_level(logging.INFO)
    [instance_id] = launch()
    event = state_change_event(instance_id)
    inject(clients.sns(), "Publish", Fault(connection_error(), times=SENDS_PER_CALL))

    # When the launch watch switches the instance, then cannot publish
    with pytest.raises(AwsError, match="EndpointConnectionError"):
        launch_watch.handler(event, lambda_context)

    # Then the report is in the log in full, and the switch is recorded as not yet reported
    [logged] = [r.report for r in caplog.records if getattr(r, "report", None)]
    assert instance_id in logged
    assert '"action":"enforced"' in logged
    assert inbox.drain() == []
    record = record_of(instance_id)
    assert record is not None
    assert (record["reported"]["BOOL"], record["pending"]["S"]) == (False, "switch")

    # When Lambda retries the same event: the instance is required now, and the retry reports its earlier switch
    summary = launch_watch.handler(event, lambda_context)

    [finding] = [f for f in summary["findings"] if f["resource_id"] == instance_id]  # type: ignore[attr-defined]
    assert (finding["action"], finding["details"]["reported_late"]) == ("enforced", "true")
    assert enforced_ids(inbox) == [instance_id]
    assert "pending" not in (record_of(instance_id) or {})


@pytest.mark.usefixtures("fix_mode", "table")
def test_a_retry_that_cannot_read_the_instances_still_reports_the_earlier_attempts_switches(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a burst of two launches whose first attempt switched both, then could not publish
    ids = launch(count=2)
    batch = queue_batch([state_change_event(instance_id) for instance_id in ids])
    inject(clients.sns(), "Publish", Fault(connection_error(), times=SENDS_PER_CALL))
    with pytest.raises(AwsError, match="EndpointConnectionError"):
        launch_watch.handler(batch, lambda_context)

    # When the retry's DescribeInstances is refused
    inject(clients.ec2(), "DescribeInstances", Fault(ec2_error("UnauthorizedOperation", status=403), times=1))
    launch_watch.handler(batch, lambda_context)

    # Then the retry reports both switches from their records, not as failures
    [message] = inbox.drain()
    assert sorted((f["resource_id"], f["action"]) for f in message.findings) == sorted(
        (instance_id, "enforced") for instance_id in ids
    )
    assert message.report["totals"]["reported_late"] == 2
    assert all("pending" not in (record_of(i) or {}) for i in ids)


@pytest.mark.usefixtures("fix_mode", "table")
def test_the_gate_reports_a_launch_watch_switch_whose_every_attempt_failed_to_publish(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a launch watch switch whose three attempts could not publish (the dead-letter queue has the event)
    [instance_id] = launch()
    event = state_change_event(instance_id)
    inject(clients.sns(), "Publish", Fault(connection_error(), times=3 * SENDS_PER_CALL))
    for _ in range(3):
        with pytest.raises(AwsError):
            launch_watch.handler(event, lambda_context)
    assert inbox.drain() == []
    # ...and its runs are over (the record is older than CLAIM_AFTER)
    age_record(instance_id, minutes=20)

    # When the gate sweeps
    summary = usage_gate.handler(SCHEDULED, lambda_context)

    # Then its report names the switch, once, and says it is late; the next sweep does not repeat it
    assert enforced_ids(inbox) == [instance_id]
    assert summary["totals"]["reported_late"] == 1
    usage_gate.handler(SCHEDULED, lambda_context)
    assert enforced_ids(inbox) == []


@pytest.mark.usefixtures("fix_mode", "table")
def test_a_fresh_launch_watch_switch_is_left_to_its_own_run(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a launch watch attempt that switched an instance a moment ago and could not publish (its retry is due)
    [instance_id] = launch()
    inject(clients.sns(), "Publish", Fault(connection_error(), times=SENDS_PER_CALL))
    with pytest.raises(AwsError):
        launch_watch.handler(state_change_event(instance_id), lambda_context)

    # When the gate sweeps meanwhile, it does not report it (the retry will: no switch reported twice)
    summary = usage_gate.handler(SCHEDULED, lambda_context)

    assert summary["totals"]["reported_late"] == 0
    assert enforced_ids(inbox) == []


@pytest.mark.usefixtures("fix_mode", "table")
def test_an_untagged_switch_is_reported_then_tagged_and_watched_by_the_next_sweep(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given CreateTags failing for the launch watch's every attempt (3 calls, each retried by botocore)
    [instance_id] = launch()
    tags_fault = inject(clients.ec2(), "CreateTags", Fault(ec2_error("InternalError", status=500), times=18))

    summary = launch_watch.handler(state_change_event(instance_id), lambda_context)

    # Then the switch is reported enforced, and enforced-but-untagged, naming the error; nothing is raised
    actions = sorted((f["action"], f.get("error_code")) for f in summary["findings"])  # type: ignore[attr-defined]
    assert actions == [("enforced", None), ("failed", "InternalError")]
    assert tags_fault.injected == 18
    assert ENFORCED_AT_TAG not in tags_of(instance_id)
    assert metadata_options(instance_id)["HttpTokens"] == "required"
    inbox.drain()

    # When it rejects IMDSv1 calls, and the gate sweeps
    put_points(instance_id, [(datetime.now(UTC) - timedelta(minutes=1), 4.0)], metric="MetadataNoTokenRejected")
    gate = usage_gate.handler(SCHEDULED, lambda_context)

    # Then the gate tagged it from the record and watched it: its rejections are reported
    assert tags_of(instance_id)[ENFORCED_BY_TAG] == "launch_watch"
    [message] = inbox.drain()
    [finding] = [f for f in message.findings if f["resource_id"] == instance_id]
    assert (finding["action"], finding["metadata_no_token_rejected"]) == ("rejected", 4.0)
    assert gate["totals"]["watched"] == 1
    record = record_of(instance_id)
    assert record is not None
    assert "pending" not in record


@pytest.mark.usefixtures("fix_mode", "table")
def test_overlapping_runs_report_one_switch(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given a ready instance the gate reads as optional, and the launch watch switching it just before the gate's
    # own modify (its running event, handled while the gate paces)
    instance_id = ready_instance()
    ran: list[bool] = []

    def launch_watch_first(**_: Any) -> None:
        if not ran:
            ran.append(True)
            launch_watch.handler(state_change_event(instance_id), lambda_context)

    # (the gate modifies through the paced client; the launch watch through the plain one)
    clients.ec2_paced().meta.events.register_first("before-call.ec2.ModifyInstanceMetadataOptions", launch_watch_first)

    gate = usage_gate.handler(SCHEDULED, lambda_context)

    # Then one run reports it enforced (the launch watch, which switched it), and the gate says another run did
    assert enforced_ids(inbox) == [instance_id]
    assert gate["totals"]["switched_by_another_run"] == 1
    assert gate["totals"]["enforced"] == 0
    assert tags_of(instance_id)[ENFORCED_BY_TAG] == "launch_watch"


@pytest.mark.usefixtures("fix_mode")
def test_a_permanently_refused_instance_is_reported_each_run_without_raising(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an SCP guarding another team's instance: every modify of it is refused
    refused, fine = ready_instance(), ready_instance()
    inject(
        clients.ec2_paced(),
        "ModifyInstanceMetadataOptions",
        Fault(ec2_error("UnauthorizedOperation"), only_for=refused),
    )

    # When the gate runs twice, neither run raises (no retry, no dead letter), and each reports it failed once
    for run in range(2):
        summary = usage_gate.handler(SCHEDULED, lambda_context)
        [message] = inbox.drain()
        failed = [f for f in message.findings if f["resource_id"] == refused]
        assert [(f["action"], f["error_code"]) for f in failed] == [("failed", "UnauthorizedOperation")]
        assert summary["status"] == "processed"
        if run == 0:
            assert [f["action"] for f in message.findings if f["resource_id"] == fine] == ["enforced"]
    assert metadata_options(refused)["HttpTokens"] == "optional"

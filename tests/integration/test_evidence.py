"""Evidence as a real account lives it, end to end under moto: restarts are not launches, a set-back after rejections
stands, running days come from the reference metric, container hosts keep or get their hop limit on evidence,
rollbacks stay within AWS's limits, and rejections are named within minutes by the alarm's run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from emulator.events import envelope
from emulator.fleet import backdate_launch, create_ledger_table
from emulator.moto_ext import metadata_defaults_of
from imds_enforcer.aws import clients
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG
from imds_enforcer.handlers import launch_watch, rejection_watch, usage_gate
from tests.support.aws import (
    SCHEDULED,
    ReportInbox,
    launch,
    metadata_options,
    modify_options_event,
    queue_batch,
    run_instances_event,
    state_change_event,
    tags_of,
)
from tests.support.context import FakeLambdaContext
from tests.support.faults import count_calls
from tests.support.metrics import aged, put_daily, put_points

pytestmark = pytest.mark.usefixtures("aws")

CLEAN = [0.0] * 14
LEDGER = "imds-enforcer-state"
EKS_AMI_NAME = "amazon-eks-node-al2023-x86_64-standard-1.31-v20250123"


@pytest.fixture
def fix_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> str:
    """The stack's state table, as the stack creates it (key `pk`), named in LEDGER_TABLE_NAME."""
    monkeypatch.setenv("LEDGER_TABLE_NAME", create_ledger_table(LEDGER))
    return LEDGER


def restart(instance_id: str) -> None:
    """Stop and start it, as a schedule would: EC2 (and moto, taught) stamps a new LaunchTime."""
    ec2 = boto3.client("ec2")
    ec2.stop_instances(InstanceIds=[instance_id])
    ec2.start_instances(InstanceIds=[instance_id])


def established(*, history: list[float | None] | None = CLEAN, days: float = 60, **kwargs: Any) -> str:
    """An optional instance first launched `days` ago, with `history` as its daily MetadataNoToken, restarted now."""
    (instance_id,) = launch(**kwargs)
    backdate_launch([instance_id], days)
    if history is not None:
        put_daily(instance_id, history)
    restart(instance_id)
    return instance_id


def reported(inbox: ReportInbox) -> dict[str, dict[str, Any]]:
    findings: dict[str, dict[str, Any]] = {}
    for message in inbox.drain():
        for finding in message.report["findings"]:
            assert finding["resource_id"] not in findings, f"two findings for {finding['resource_id']}"
            findings[finding["resource_id"]] = finding
    return findings


def eks_image() -> str:
    """An AMI of the EKS-optimized family (by name), as a node group's instances run."""
    ec2 = boto3.client("ec2")
    (builder,) = launch(tokens="required")
    image_id: str = ec2.create_image(InstanceId=builder, Name=EKS_AMI_NAME)["ImageId"]
    return image_id


# --- 1. a restart is not a launch ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_a_restarted_imdsv1_user_is_reported_not_switched(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an instance first launched 60 days ago that made IMDSv1 calls last week, started again this morning
    user = established(history=[0.0] * 6 + [9.0] + [0.0] * 7)
    assert metadata_options(user)["HttpTokens"] == "optional"

    # When its `running` state change arrives in fix mode
    launch_watch.handler(state_change_event(user), lambda_context)

    # Then it stays optional and the report says what the gate would: blocked, on its history, as a restart
    assert metadata_options(user)["HttpTokens"] == "optional"
    finding = reported(inbox)[user]
    assert finding["action"] == "blocked"
    assert finding["metadata_no_token"] == 9.0
    assert finding["reason"].startswith("restarted (first launched ")
    assert finding["details"]["launch"] == "restart"


@pytest.mark.usefixtures("fix_mode")
def test_restarts_are_decided_on_their_history_in_one_batched_read(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given three restarted instances, quiet / too little data / first launched inside the window, and a new one
    quiet = established()
    sparse = established(history=[0.0] * 4 + [None] * 10)
    young = established(days=3, history=[0.0, 0.0, 0.0])
    (new,) = launch()
    log = count_calls(clients.ec2(), clients.cloudwatch())

    # When one RunInstances-shaped event names them all (the new one launched seconds ago)
    launch_watch.handler(run_instances_event([quiet, sparse, young, new]), lambda_context)

    # Then the quiet restart is enforced on evidence, the others reported as the gate would, the new one enforced blind
    findings = reported(inbox)
    assert {key: value["action"] for key, value in findings.items()} == {
        quiet: "enforced",
        sparse: "insufficient_data",
        young: "insufficient_data",
        new: "enforced",
    }
    assert "MetadataNoToken has data on 4 of the 14 days it ran (needs 13)" in findings[sparse]["reason"]
    assert "after the 14-day window began" in findings[young]["reason"]
    assert [metadata_options(i)["HttpTokens"] for i in (quiet, sparse, young, new)] == [
        "required",
        "optional",
        "optional",
        "required",
    ]
    # And the three restarts' evidence came in one GetMetricData call (2 queries each), the new one needed none
    assert log.counts["GetMetricData"] == 1
    assert log.metric_queries == [6]


@pytest.mark.usefixtures("fix_mode")
def test_a_scheduled_fleets_morning_start_is_decided_in_one_read_whatever_the_number_of_events(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given six instances of a stop/start schedule, four quiet and two that called IMDSv1, started this morning:
    # one `running` event each, gathered by the queue into one batch
    quiet = [established() for _ in range(4)]
    users = [established(history=[0.0] * 10 + [2.0] + [0.0] * 3) for _ in range(2)]
    batch = queue_batch([state_change_event(i) for i in [*quiet, *users]])
    log = count_calls(clients.ec2(), clients.cloudwatch())

    # When the launch watch reads the batch
    launch_watch.handler(batch, lambda_context)

    # Then every restart is decided on its own history, read in one DescribeInstances and one GetMetricData
    findings = reported(inbox)
    assert {i: findings[i]["action"] for i in [*quiet, *users]} == {
        **dict.fromkeys(quiet, "enforced"),
        **dict.fromkeys(users, "blocked"),
    }
    assert [metadata_options(i)["HttpTokens"] for i in users] == ["optional", "optional"]
    assert (log.counts["DescribeInstances"], log.counts["GetMetricData"]) == (1, 1)
    assert log.metric_queries == [12]


def test_flag_mode_reports_a_scheduled_restart_only_when_its_verdict_changes(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, ledger: str
) -> None:
    # Given a quiet instance on a stop/start schedule, and an event for each morning's start
    quiet = established()

    # When it starts on Monday, then on Tuesday (flag mode)
    first = launch_watch.handler(state_change_event(quiet), lambda_context)
    monday = reported(inbox)
    restart(quiet)
    second = launch_watch.handler(state_change_event(quiet), lambda_context)
    tuesday = reported(inbox)

    # Then Monday reports it ready, Tuesday says nothing: the same verdict is not posted every morning
    assert monday[quiet]["action"] == "ready"
    assert tuesday == {}
    assert first["published"] == 1
    assert second["published"] == 0

    # When its software starts calling IMDSv1 (the verdict changes) and it restarts again
    put_points(quiet, [(aged(0.2), 3.0)])
    restart(quiet)
    launch_watch.handler(state_change_event(quiet), lambda_context)

    # Then the new verdict is reported
    assert reported(inbox)[quiet]["action"] == "blocked"


def test_a_launch_is_reported_once_even_when_two_events_name_it(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, ledger: str
) -> None:
    # Given a new instance, announced by CloudTrail's RunInstances and by its running state change (flag mode)
    (new,) = launch()

    launch_watch.handler(run_instances_event([new]), lambda_context)
    launch_watch.handler(state_change_event(new), lambda_context)

    # Then it is flagged once
    messages = inbox.drain()
    assert [finding["resource_id"] for message in messages for finding in message.report["findings"]] == [new]


# --- 2. a person's set-back after a rejection stands ---------------------------------------------------------


def enforced_then_rejected(*, rejected: float | None) -> str:
    """An instance the gate required IMDSv2 on 3 days ago (tagged), whose IMDSv1 calls were then rejected."""
    when = aged(3).replace(microsecond=0)
    tags = {ENFORCED_AT_TAG: when.strftime("%Y-%m-%dT%H:%M:%SZ"), ENFORCED_BY_TAG: "usage_gate"}
    (instance_id,) = launch(tokens="required", tags=tags)
    backdate_launch([instance_id], 60)
    put_daily(instance_id, CLEAN)
    if rejected:
        put_points(instance_id, [(when + timedelta(hours=5), rejected)], metric="MetadataNoTokenRejected")
    return instance_id


@pytest.mark.usefixtures("fix_mode")
def test_a_set_back_after_rejections_stands_and_is_explained(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an on-call engineer sets an instance back to optional after its IMDSv1 calls were rejected
    victim = enforced_then_rejected(rejected=41.0)
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=victim, HttpTokens="optional")

    # When the watch hears the ModifyInstanceMetadataOptions (fix mode)
    launch_watch.handler(modify_options_event(victim, "optional", caller_role="OnCall"), lambda_context)

    # Then it is not re-enforced, and the report says how many calls, who, and the way out
    assert metadata_options(victim)["HttpTokens"] == "optional"
    finding = reported(inbox)[victim]
    assert finding["action"] == "flagged"
    assert finding["metadata_no_token_rejected"] == 41.0
    assert "OnCall" in finding["details"]["set_back_by"]
    assert "not re-enforced" in finding["reason"]
    assert "exemption tag" in finding["reason"]

    # And the next gate sweep does not switch it back either (its MetadataNoToken reads zero: calls were rejected)
    usage_gate.handler(SCHEDULED, lambda_context)
    assert metadata_options(victim)["HttpTokens"] == "optional"
    assert reported(inbox)[victim]["action"] == "flagged"


@pytest.mark.usefixtures("fix_mode")
def test_a_set_back_without_rejections_is_still_undone(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    victim = enforced_then_rejected(rejected=None)
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=victim, HttpTokens="optional")

    launch_watch.handler(modify_options_event(victim, "optional", caller_role="Admin"), lambda_context)

    assert metadata_options(victim)["HttpTokens"] == "required"
    assert reported(inbox)[victim]["action"] == "enforced"


# --- 3. running days, age from the first launch --------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_the_gate_enforces_a_weekday_only_instance_and_not_one_stopped_most_of_the_window(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an instance that runs on weekdays only (restarted this morning), and one that ran on 3 days of 14
    weekdays = [day % 7 not in (2, 3) for day in range(14)]
    office = established(history=None)
    put_daily(office, [0.0 if up else None for up in weekdays], running=weekdays)
    rarely = [day in (1, 6, 11) for day in range(14)]
    (idle,) = launch()
    backdate_launch([idle], 90)
    put_daily(idle, [0.0 if up else None for up in rarely], running=rarely)

    # When the gate sweeps
    usage_gate.handler(SCHEDULED, lambda_context)

    # Then the weekday instance is enforced (its weekends are not missing evidence, its restart is not a launch)
    findings = reported(inbox)
    assert findings[office]["action"] == "enforced"
    assert metadata_options(office)["HttpTokens"] == "required"
    # And the idle one is insufficient data, in words
    assert findings[idle]["action"] == "insufficient_data"
    assert "ran on 3 of 14 days (needs 7)" in findings[idle]["reason"]


# --- 4. container hosts: the hop limit follows the evidence -------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_the_gate_keeps_a_quiet_nodes_hop_limit_and_prepares_a_node_still_calling_imdsv1(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given two EKS nodes at hop limit 1, known by their AMI family (no tags): one quiet, one whose pods call IMDSv1
    image = eks_image()
    quiet = established(image_id=image)
    noisy = established(image_id=image, history=[0.0] * 10 + [25.0] + [0.0] * 3)

    # When the gate sweeps in fix mode
    usage_gate.handler(SCHEDULED, lambda_context)

    # Then the quiet node requires IMDSv2 at hop limit 1 (nothing reached IMDS through the extra hop)...
    assert (metadata_options(quiet)["HttpTokens"], metadata_options(quiet)["HttpPutResponseHopLimit"]) == (
        "required",
        1,
    )
    # ...and the noisy one gets hop limit 2 with tokens still optional, tagged, reported `prepared` with its calls
    assert (metadata_options(noisy)["HttpTokens"], metadata_options(noisy)["HttpPutResponseHopLimit"]) == (
        "optional",
        2,
    )
    assert PREPARED_AT_TAG in tags_of(noisy)
    findings = reported(inbox)
    assert findings[quiet]["action"] == "enforced"
    assert findings[noisy]["action"] == "prepared"
    assert findings[noisy]["metadata_no_token"] == 25.0
    assert f"EKS-optimized AMI {EKS_AMI_NAME}" in findings[noisy]["reason"]


def test_preparing_is_off_in_flag_mode_and_when_switched_off(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    noisy = established(tags={"eks:cluster-name": "prod"}, history=[4.0] + [0.0] * 13)
    for mode, prepare in (("flag", "true"), ("fix", "false")):
        monkeypatch.setenv("ENFORCEMENT_MODE", mode)
        monkeypatch.setenv("PREPARE_CONTAINER_HOSTS", prepare)
        usage_gate.handler(SCHEDULED, lambda_context)
        assert reported(inbox)[noisy]["action"] == "blocked"
        assert metadata_options(noisy)["HttpPutResponseHopLimit"] == 1


@pytest.mark.usefixtures("fix_mode")
def test_a_new_node_of_an_eks_ami_is_enforced_blind_with_hop_limit_two(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a brand-new instance of an EKS-optimized AMI, without any container tag
    (node,) = launch(image_id=eks_image())

    launch_watch.handler(run_instances_event([node]), lambda_context)

    # Then it requires IMDSv2 with hop limit 2, and the report says why
    assert (metadata_options(node)["HttpTokens"], metadata_options(node)["HttpPutResponseHopLimit"]) == ("required", 2)
    assert f"EKS-optimized AMI {EKS_AMI_NAME}" in reported(inbox)[node]["reason"]


# --- 5. rollback within AWS's limits ---------------------------------------------------------------------------


@pytest.fixture
def rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("ROLLBACK_ON_REJECTED", "true")


def ec2_defaults() -> dict[str, Any]:
    from moto.backends import get_backend

    return metadata_defaults_of(get_backend("ec2")["123456789012"]["us-east-1"])


@pytest.mark.usefixtures("rollback")
def test_an_exempt_instance_is_never_rolled_back_and_its_tag_value_stands(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a rejecting instance a person has since tagged exempt (with their own reason), still required
    instance_id = enforced_then_rejected(rejected=7.0)
    boto3.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": "imdsv2-exempt", "Value": "CHG-77"}])

    usage_gate.handler(SCHEDULED, lambda_context)

    # Then nothing is modified or rewritten; the rejection is reported, saying why it was not rolled back
    assert metadata_options(instance_id)["HttpTokens"] == "required"
    assert tags_of(instance_id)["imdsv2-exempt"] == "CHG-77"
    finding = reported(inbox)[instance_id]
    assert finding["action"] == "rejected"
    assert "not rolled back: it carries the exemption tag" in finding["reason"]


@pytest.mark.usefixtures("rollback")
def test_no_rollback_while_the_account_default_enforces_imdsv2(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given the region enforces IMDSv2 at the account level (AWS then refuses HttpTokens=optional)
    ec2_defaults()["HttpTokensEnforced"] = "enabled"
    instance_id = enforced_then_rejected(rejected=12.0)

    usage_gate.handler(SCHEDULED, lambda_context)

    # Then the instance is left as it is, no exemption tag is written, and the report says why and what to do
    assert metadata_options(instance_id)["HttpTokens"] == "required"
    assert "imdsv2-exempt" not in tags_of(instance_id)
    finding = reported(inbox)[instance_id]
    assert finding["action"] == "rejected"
    assert "rollback impossible" in finding["reason"]
    assert "HttpTokensEnforced=enabled" in finding["reason"]


@pytest.mark.parametrize(("container_host", "hop_limit"), [(True, 2), (False, None)])
def test_the_account_default_gets_hop_limit_two_only_where_container_hosts_run(
    inbox: ReportInbox,
    lambda_context: FakeLambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    container_host: bool,
    hop_limit: int | None,
) -> None:
    # Given a clean region (nothing optional), with or without an EKS node among its instances
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    launch(tokens="required", tags={"kubernetes.io/cluster/prod": "owned"} if container_host else {"team": "web"})

    usage_gate.handler(SCHEDULED, lambda_context)

    # Then the default requires IMDSv2, with hop limit 2 only where container hosts run, and the report says so
    defaults = ec2_defaults()
    assert defaults["HttpTokens"] == "required"
    assert defaults.get("HttpPutResponseHopLimit") == hop_limit
    (finding,) = reported(inbox).values()
    assert finding["resource_type"] == "account"
    expected = "hop limit 2 because container hosts run here" if container_host else "no container host runs here"
    assert expected in finding["reason"]


# --- 6. rejections named within minutes -------------------------------------------------------------------------


def alarm_event(state: str = "ALARM") -> dict[str, Any]:
    return envelope(
        "CloudWatch Alarm State Change",
        "aws.cloudwatch",
        {"alarmName": "ImdsEnforcer-RejectedNow", "state": {"value": state, "reason": "Threshold Crossed"}},
        resources=["arn:aws:cloudwatch:us-east-1:123456789012:alarm:ImdsEnforcer-RejectedNow"],
    )


def test_the_alarms_run_names_every_rejecting_instance_whoever_required_imdsv2(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, rollback: None
) -> None:
    # Given two instances rejecting IMDSv1 calls minutes ago: one this service switched, one required at launch
    ours = enforced_then_rejected(rejected=None)
    (theirs,) = launch(tokens="required")
    now = datetime.now(UTC)
    for instance_id, calls in ((ours, 5.0), (theirs, 8.0)):
        put_points(instance_id, [(now - timedelta(minutes=4), calls)], metric="MetadataNoTokenRejected")
    (quiet,) = launch(tokens="required")
    log = count_calls(clients.ec2(), clients.cloudwatch())

    # When the rejection alarm goes into ALARM
    result = rejection_watch.handler(alarm_event(), lambda_context)

    # Then one report names both, found with one query: ours rolled back (opt-in), theirs reported and left alone
    findings = reported(inbox)
    assert set(findings) == {ours, theirs}
    assert quiet not in findings
    assert findings[ours]["action"] == "rolled_back"
    assert metadata_options(ours)["HttpTokens"] == "optional"
    assert findings[theirs]["action"] == "rejected"
    assert findings[theirs]["metadata_no_token_rejected"] == 8.0
    assert "not required by this service" in findings[theirs]["reason"]
    assert metadata_options(theirs)["HttpTokens"] == "required"
    assert result["status"] == "processed"
    assert log.counts["GetMetricData"] == 1


def test_an_alarm_going_back_to_ok_changes_nothing(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    result = rejection_watch.handler(alarm_event("OK"), lambda_context)

    assert result["status"] == "ignored"
    assert "not ALARM" in result["reason"]
    assert inbox.drain() == []

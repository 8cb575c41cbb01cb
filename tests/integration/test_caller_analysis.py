"""The caller analysis end to end under moto: the real gate handler selects blocked instances, tags them, sends the
stack's analyzer document through SSM, and a later run attaches the recorded analyzer output to the report.

moto was taught (emulator.moto_ext) what SSM does that it does not: which instances are managed, SendCommand by
InstanceIds reaching only those, and the output a command returns on an instance (a recorded analyzer run)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from emulator import doors as build
from emulator.fleet import backdate_launch
from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.domain.analyzer_document import ANALYZER_COMMIT, document_content
from imds_enforcer.domain.callers import CALLER_ANALYSIS_COMMAND_TAG, CALLER_ANALYSIS_TAG
from imds_enforcer.domain.report import Report
from imds_enforcer.domain.slack_message import render_payload
from imds_enforcer.handlers.usage_gate import handler as usage_gate
from tests.support.aws import SCHEDULED, ReportInbox, launch, tags_of
from tests.support.context import FakeLambdaContext
from tests.support.faults import Fault, count_calls, inject, json_error
from tests.support.metrics import put_daily

pytestmark = pytest.mark.usefixtures("aws")

DOCUMENT = "ImdsEnforcer-us-east-1-ImdsPacketAnalyzer"


def blocked_instance(calls: float) -> str:
    """An optional instance launched 30 days ago that made `calls` IMDSv1 calls three days ago (the gate blocks it)."""
    (instance_id,) = launch()
    backdate_launch([instance_id], 30)
    put_daily(instance_id, [0.0, 0.0, calls, *[0.0] * 12])
    return instance_id


@pytest.fixture
def run_mode(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's document exists, and the gate runs analyses (CALLER_ANALYSIS=run)."""
    build.create_analyzer_document(DOCUMENT, document_content())
    monkeypatch.setenv("CALLER_ANALYSIS", "run")
    monkeypatch.setenv("CALLER_ANALYSIS_DOCUMENT", DOCUMENT)


def gate_run(inbox: ReportInbox) -> dict[str, dict[str, Any]]:
    usage_gate(SCHEDULED, FakeLambdaContext())
    [message] = inbox.drain()
    return {f["resource_id"]: f for f in message.report["findings"] if f["resource_type"] == "instance"}


def commands() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = boto3.client("ssm").list_commands()["Commands"]
    return found


@pytest.mark.usefixtures("run_mode")
def test_the_gate_selects_the_blocked_instances_with_the_most_calls_tags_them_and_sends_the_document(
    inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    busiest, busy, quiet = blocked_instance(40), blocked_instance(10), blocked_instance(5)
    for instance_id in (busiest, busy, quiet):
        build.manage_with_ssm(instance_id)
    monkeypatch.setenv("CALLER_ANALYSIS_MAX_INSTANCES", "2")
    monkeypatch.setenv("CALLER_ANALYSIS_MINUTES", "12")
    tags_at_send: dict[str, dict[str, str]] = {}

    def read_tags_at_send(request: Any, **_: Any) -> None:
        # What IAM would evaluate at SendCommand time: the selection tag must already be on each instance.
        for instance_id in json.loads(request.body)["InstanceIds"]:
            tags_at_send[instance_id] = tags_of(instance_id)

    clients.ssm().meta.events.register_first("before-send.ssm.SendCommand", read_tags_at_send)

    findings = gate_run(inbox)

    [command] = commands()
    assert command["DocumentName"] == DOCUMENT
    assert sorted(command["InstanceIds"]) == sorted([busiest, busy])
    assert command["Parameters"] == {"Minutes": ["12"]}
    assert set(tags_at_send) == {busiest, busy}
    assert all(CALLER_ANALYSIS_TAG in tags for tags in tags_at_send.values())
    for instance_id in (busiest, busy):
        finding = findings[instance_id]
        assert finding["action"] == "blocked"
        assert finding["details"]["caller_analysis"] == "started"
        assert finding["details"]["caller_analysis_command_id"] == command["CommandId"]
        assert tags_of(instance_id)[CALLER_ANALYSIS_COMMAND_TAG] == command["CommandId"]
        assert "callers" not in finding
    assert findings[quiet]["details"]["caller_analysis"] == "waiting"
    assert "at most 2 instance(s) a run" in findings[quiet]["reason"]
    assert CALLER_ANALYSIS_TAG not in tags_of(quiet)


@pytest.mark.usefixtures("run_mode")
def test_a_later_run_attaches_the_recorded_callers_to_the_blocked_finding(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(39)
    build.manage_with_ssm(instance_id)
    build.record_analyzer_run(instance_id)  # what the document prints on this instance (recorded output)
    gate_run(inbox)  # selects and sends

    finding = gate_run(inbox)[instance_id]

    assert finding["action"] == "blocked"
    assert finding["details"]["caller_analysis"] == "done"
    assert finding["details"]["caller_analysis_analyzer"] == f"aws/aws-imds-packet-analyzer@{ANALYZER_COMMIT}"
    top = finding["callers"][0]
    assert top["process"] == "python3"
    assert top["command_line"] == "/usr/bin/python3 /opt/reporting/export.py --db-password **** --since 1d"
    assert top["count"] == 24
    assert top["parent_chain"][:2] == ["sh: /bin/sh -c /opt/reporting/run-export.sh", "crond: /usr/sbin/crond -n"]
    assert "S3cr3t" not in json.dumps(finding)
    assert "IMDSv1 callers seen by the ImdsPacketAnalyzer in 10 min" in finding["reason"]
    # One command only: an analysed instance is not sent the analyzer again while SSM keeps the result.
    assert len(commands()) == 1

    # The Slack message shows the callers too.
    report = Report(account="123456789012", region="us-east-1", trigger="gate", mode="flag", findings=[finding])
    text = json.dumps(render_payload(report).blocks)
    assert "IMDSv1 callers (ImdsPacketAnalyzer)" in text
    assert "/opt/reporting/export.py --db-password ****" in text


@pytest.mark.usefixtures("run_mode")
def test_instances_without_ssm_with_an_offline_agent_or_not_on_linux_are_reported_as_such(inbox: ReportInbox) -> None:
    unmanaged, windows, offline = blocked_instance(9), blocked_instance(8), blocked_instance(7)
    build.manage_with_ssm(windows, platform_type="Windows")
    build.manage_with_ssm(offline, ping_status="ConnectionLost")

    findings = gate_run(inbox)  # no exception: none of this is an error of the run

    assert {i: findings[i]["details"]["caller_analysis"] for i in (unmanaged, windows, offline)} == {
        unmanaged: "not_managed",
        windows: "not_linux",
        offline: "agent_offline",
    }
    assert "not managed by Systems Manager" in findings[unmanaged]["reason"]
    assert "runs on Linux only" in findings[windows]["reason"]
    assert commands() == []


@pytest.mark.usefixtures("run_mode")
def test_a_failed_analysis_is_a_detail_of_the_finding_never_an_error_of_the_run(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(12)
    build.manage_with_ssm(instance_id)
    build.record_analyzer_run(instance_id, output=build.RECORDED_UNSUPPORTED_OS, status="Failed")
    gate_run(inbox)

    finding = gate_run(inbox)[instance_id]

    assert finding["details"]["caller_analysis"] == "failed"
    assert finding["details"]["caller_analysis_detail"] == (
        "unsupported-os (alpine 3.20.3: install BCC by hand (see the analyzer's README))"
    )
    assert "caller analysis failed: unsupported-os" in finding["reason"]


@pytest.mark.usefixtures("run_mode")
def test_an_analysis_still_running_says_so(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(12)
    build.manage_with_ssm(instance_id)
    build.record_analyzer_run(instance_id, status="InProgress")
    gate_run(inbox)

    assert gate_run(inbox)[instance_id]["details"]["caller_analysis"] == "running"


@pytest.mark.usefixtures("run_mode")
def test_an_instance_whose_result_ssm_has_forgotten_is_analysed_again(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(12)
    build.manage_with_ssm(instance_id)
    boto3.client("ec2").create_tags(
        Resources=[instance_id],
        Tags=[
            {"Key": CALLER_ANALYSIS_TAG, "Value": "2026-09-01T06:00:00+00:00"},
            {"Key": CALLER_ANALYSIS_COMMAND_TAG, "Value": "0b6e0a4e-0000-4000-8000-000000000000"},
        ],
    )

    finding = gate_run(inbox)[instance_id]

    [command] = commands()
    assert finding["details"]["caller_analysis"] == "started"
    assert tags_of(instance_id)[CALLER_ANALYSIS_COMMAND_TAG] == command["CommandId"]


def test_read_mode_attaches_results_but_never_selects_tags_or_sends(
    inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    analysed, other = blocked_instance(30), blocked_instance(20)
    for instance_id in (analysed, other):
        build.manage_with_ssm(instance_id)
    build.record_analyzer_run(analysed)
    build.create_analyzer_document(DOCUMENT, document_content())
    monkeypatch.setenv("CALLER_ANALYSIS", "run")
    monkeypatch.setenv("CALLER_ANALYSIS_DOCUMENT", DOCUMENT)
    monkeypatch.setenv("CALLER_ANALYSIS_MAX_INSTANCES", "1")
    gate_run(inbox)  # an earlier run, in run mode, analysed the busiest one
    monkeypatch.setenv("CALLER_ANALYSIS", "read")
    calls = count_calls(clients.ssm(), clients.ec2())

    findings = gate_run(inbox)

    made = calls.take()
    assert made.get("GetCommandInvocation") == 1
    assert not {"SendCommand", "DescribeInstanceInformation", "CreateTags"} & set(made)
    assert findings[analysed]["details"]["caller_analysis"] == "done"
    assert "caller_analysis" not in findings[other]["details"]
    assert CALLER_ANALYSIS_TAG not in tags_of(other)


def test_off_makes_no_ssm_call_at_all(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(30)
    build.manage_with_ssm(instance_id)
    calls = count_calls(clients.ssm())

    findings = gate_run(inbox)

    assert calls.take() == {}
    assert "caller_analysis" not in findings[instance_id]["details"]


@pytest.mark.usefixtures("run_mode")
def test_an_unexpected_send_failure_is_reported_first_and_raised_after(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(30)
    build.manage_with_ssm(instance_id)
    inject(
        clients.ssm(), "SendCommand", Fault(json_error("AccessDeniedException", "not authorized to ssm:SendCommand"))
    )

    with pytest.raises(UnexpectedAwsError, match="SendCommand: AccessDeniedException"):
        usage_gate(SCHEDULED, FakeLambdaContext())

    [message] = inbox.drain()
    [finding] = [f for f in message.report["findings"] if f["resource_id"] == instance_id]
    assert finding["action"] == "blocked"
    assert finding["details"]["caller_analysis"] == "error"
    assert finding["details"]["caller_analysis_detail"].startswith("SendCommand failed: AccessDeniedException")


@pytest.mark.usefixtures("run_mode")
def test_an_agent_gone_between_listing_and_sending_is_reported_and_the_run_goes_on(inbox: ReportInbox) -> None:
    instance_id = blocked_instance(30)
    build.manage_with_ssm(instance_id)
    inject(clients.ssm(), "SendCommand", Fault(json_error("InvalidInstanceId", "Instances not in a valid state")))

    finding = gate_run(inbox)[instance_id]  # an expected refusal: no exception

    assert finding["details"]["caller_analysis"] == "error"
    assert "InvalidInstanceId" in finding["details"]["caller_analysis_detail"]


def test_run_mode_without_a_document_says_so(inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    instance_id = blocked_instance(30)
    build.manage_with_ssm(instance_id)
    monkeypatch.setenv("CALLER_ANALYSIS", "run")

    finding = gate_run(inbox)[instance_id]

    assert finding["details"]["caller_analysis"] == "not_configured"
    assert commands() == []


def test_moto_refuses_an_unknown_document_or_an_unmanaged_instance_as_ssm_does() -> None:
    # The teaching the tests above rely on: SendCommand by id reaches only managed instances of a real document.
    (instance_id,) = launch()
    ssm = boto3.client("ssm")
    with pytest.raises(ssm.exceptions.ClientError, match="InvalidDocument"):
        ssm.send_command(InstanceIds=[instance_id], DocumentName="NoSuchDocument")
    build.create_analyzer_document(DOCUMENT, document_content())
    with pytest.raises(ssm.exceptions.ClientError, match="InvalidInstanceId"):
        ssm.send_command(InstanceIds=[instance_id], DocumentName=DOCUMENT)
    (other,) = launch()
    build.manage_with_ssm(instance_id)
    command = ssm.send_command(InstanceIds=[instance_id], DocumentName=DOCUMENT)["Command"]
    assert command["InstanceIds"] == [instance_id]
    with pytest.raises(ssm.exceptions.ClientError, match="InvocationDoesNotExist"):
        ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=other)

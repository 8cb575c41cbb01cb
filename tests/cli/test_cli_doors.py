"""`imds-enforcer audit` on the IMDS doors outside EC2 instances and on the caller analysis, in-process against moto:
what a user sees (the transition path, the findings, the callers) and that the audit changes and sends nothing."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from emulator import doors as build
from emulator.fleet import backdate_launch
from imds_enforcer.domain.analyzer_document import document_content
from imds_enforcer.domain.callers import CALLER_ANALYSIS_TAG
from imds_enforcer.handlers.usage_gate import handler as usage_gate
from imds_enforcer_cli.main import main
from tests.support.aws import SCHEDULED, launch, tags_of
from tests.support.context import FakeLambdaContext
from tests.support.metrics import put_daily
from tests.support.schema import assert_valid_report

DOCUMENT = "ImdsEnforcer-us-east-1-ImdsPacketAnalyzer"
DOOR_STEPS = (
    "SageMaker notebook instances",
    "Lightsail instances",
    "Elastic Beanstalk environments",
    "Batch compute environments",
    "EKS managed node groups",
    "ECS capacity providers",
    "EMR clusters",
)
# Every change the service could make to a door, asked for by the environment: the audit must ignore all of it.
EVERY_DOOR_FIX = {"ENFORCEMENT_MODE": "fix", "FIX_SAGEMAKER_NOTEBOOKS": "true", "FIX_LIGHTSAIL_INSTANCES": "true"}


def audit_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["audit", "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    (report,) = json.loads(out)
    assert_valid_report(report)
    return dict(report)


def test_the_audit_shows_every_door_on_the_transition_path_and_changes_none(
    aws: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one door of each type allowing IMDSv1, and an environment asking for every door fix
    doors = build.seed_doors()
    for name, value in EVERY_DOOR_FIX.items():
        monkeypatch.setenv(name, value)

    # When the audit runs
    report = audit_json(capsys)

    # Then each door is flagged, each type has its line on the path, and none was changed
    found = {(f["resource_type"], f["resource_id"]): f["action"] for f in report["findings"]}
    for resource_type, ids in doors.by_type.items():
        for resource_id in ids:
            assert found[(resource_type, resource_id)] == "flagged"
    steps = {step["name"]: step for step in report["transition"]["steps"]}
    for name in DOOR_STEPS:
        assert steps[name]["status"] == "action", name
    assert "FIX_SAGEMAKER_NOTEBOOKS fixes them in fix mode" in steps["SageMaker notebook instances"]["detail"]
    assert "only flagged" in steps["EMR clusters"]["detail"]
    # The doors that launch EC2 instances would be denied by the launch guardrail: they count against readiness.
    message = report["transition"]["guardrails"]["message"]
    assert "1 batch compute environment" in message
    assert "1 eks nodegroup" in message
    described = boto3.client("sagemaker").describe_notebook_instance(NotebookInstanceName=doors.notebook_stopped)
    assert described["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"] == "1"
    lightsail = boto3.client("lightsail").get_instance(instanceName=doors.lightsail)["instance"]
    assert lightsail["metadataOptions"]["httpTokens"] == "optional"


def test_the_audit_of_an_account_without_doors_says_none_allows_imdsv1(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    report = audit_json(capsys)

    steps = {step["name"]: step for step in report["transition"]["steps"]}
    assert {steps[name]["status"] for name in DOOR_STEPS} == {"ok"}


def test_the_audit_shows_the_callers_the_gate_found_and_never_sends_an_analysis(
    aws: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two blocked instances managed by SSM; the gate (caller_analysis=run, one a run) analysed the busier one
    (analysed,) = launch()
    (other,) = launch()
    backdate_launch([analysed, other], 30)
    put_daily(analysed, [0.0, 0.0, 39.0, *[0.0] * 12])
    put_daily(other, [0.0, 0.0, 4.0, *[0.0] * 12])
    for instance_id in (analysed, other):
        build.manage_with_ssm(instance_id)
    build.record_analyzer_run(analysed)
    build.create_analyzer_document(DOCUMENT, document_content())
    for name, value in {
        "CALLER_ANALYSIS": "run",
        "CALLER_ANALYSIS_DOCUMENT": DOCUMENT,
        "CALLER_ANALYSIS_MAX_INSTANCES": "1",
    }.items():
        monkeypatch.setenv(name, value)
    usage_gate(SCHEDULED, FakeLambdaContext())
    capsys.readouterr()  # the handler's own log lines
    sent = len(boto3.client("ssm").list_commands()["Commands"])

    # When the audit runs (with the same environment, asking to run analyses)
    report = audit_json(capsys)
    code = main(["audit"])
    table = capsys.readouterr().out

    # Then the analysed instance carries its callers, the path names them, and nothing new was sent or tagged
    assert code == 0
    findings = {f["resource_id"]: f for f in report["findings"]}
    assert findings[analysed]["callers"][0]["command_line"].startswith("/usr/bin/python3 /opt/reporting/export.py")
    assert "callers" not in findings[other]
    step = next(s for s in report["transition"]["steps"] if s["name"] == "IMDSv1 callers (ImdsPacketAnalyzer)")
    assert step["status"] == "action"
    assert "1 analysed" in step["detail"]
    assert "top callers: python3" in step["detail"]
    assert "IMDSv1 callers seen by the ImdsPacketAnalyzer" in table
    assert len(boto3.client("ssm").list_commands()["Commands"]) == sent
    assert CALLER_ANALYSIS_TAG not in tags_of(other)


def test_an_enforce_dry_run_never_sends_an_analysis_even_when_the_environment_runs_them(
    aws: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a blocked instance managed by SSM, the document, and an environment asking to run analyses
    (instance_id,) = launch()
    backdate_launch([instance_id], 30)
    put_daily(instance_id, [0.0, 0.0, 9.0, *[0.0] * 12])
    build.manage_with_ssm(instance_id)
    build.create_analyzer_document(DOCUMENT, document_content())
    monkeypatch.setenv("CALLER_ANALYSIS", "run")
    monkeypatch.setenv("CALLER_ANALYSIS_DOCUMENT", DOCUMENT)

    # When the gate sweeps from the workstation as a dry run
    code = main(["enforce", "--dry-run", "--format", "json"])
    (report,) = json.loads(capsys.readouterr().out)

    # Then the instance is reported blocked, and nothing was tagged or sent
    assert code == 0
    assert {f["resource_id"]: f["action"] for f in report["findings"]}[instance_id] == "blocked"
    assert boto3.client("ssm").list_commands()["Commands"] == []
    assert CALLER_ANALYSIS_TAG not in tags_of(instance_id)

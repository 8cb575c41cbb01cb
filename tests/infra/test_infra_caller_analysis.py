"""The caller analysis and the IMDS doors in the synthesized stack (conftest turns both on): the analyzer document,
who may send it where, and the doors' reads and opt-in writes."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Template

from imds_enforcer.domain.analyzer_document import ANALYZER_COMMIT, STEP_TIMEOUT_SECONDS
from tests.infra.conftest import REGIONS
from tests.infra.template_helpers import as_list, render
from tests.infra.test_infra_permissions import DOOR_READS
from tests.infra.test_infra_stack import HANDLERS, _role_policy_statements

DOCUMENT_NAME = "ImdsEnforcer-us-east-1-ImdsPacketAnalyzer"


def _document(template: Template) -> dict[str, Any]:
    (document,) = template.find_resources("AWS::SSM::Document").values()
    return dict(document["Properties"])


def test_the_analyzer_is_a_linux_command_document_of_the_stack_pinned_to_one_commit(template: Template) -> None:
    document = _document(template)

    assert {key: document[key] for key in ("Name", "DocumentType", "DocumentFormat", "TargetType", "UpdateMethod")} == {
        "Name": DOCUMENT_NAME,
        "DocumentType": "Command",
        "DocumentFormat": "JSON",
        "TargetType": "/AWS::EC2::Instance",
        "UpdateMethod": "NewVersion",
    }
    content = document["Content"]
    (step,) = content["mainSteps"]
    script = "\n".join(step["inputs"]["runCommand"])
    assert step["action"] == "aws:runShellScript"
    assert step["precondition"] == {"StringEquals": ["platformType", "Linux"]}
    assert step["inputs"]["timeoutSeconds"] == str(STEP_TIMEOUT_SECONDS)
    # The analyzer comes from one commit's archive, never a branch; the trace is bounded by the Minutes parameter.
    assert f"ANALYZER_COMMIT='{ANALYZER_COMMIT}'" in script
    assert "https://codeload.github.com/aws/aws-imds-packet-analyzer/tar.gz/${ANALYZER_COMMIT}" in script
    assert 'timeout --signal=INT --kill-after=30 "$((MINUTES * 60))"' in script
    # The configured trace time is the default; a caller can only pass digits (it lands in a shell script).
    assert content["parameters"]["Minutes"] == {
        "type": "String",
        "description": "How long to trace, in minutes (1 to 30)",
        "default": "15",
        "allowedPattern": "^([1-9]|[12][0-9]|30)$",
    }


@pytest.mark.parametrize("region", REGIONS)
def test_each_regional_stack_has_its_own_document_and_names_it_to_the_gate(synthesized: Any, region: str) -> None:
    template = synthesized.template(region)
    name = f"ImdsEnforcer-{region}-ImdsPacketAnalyzer"

    assert _document(template)["Name"] == name
    template.has_output("CallerAnalysisDocumentName", {"Value": name})
    (gate,) = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": HANDLERS["usage_gate"]}}
    ).values()
    assert gate["Properties"]["Environment"]["Variables"]["CALLER_ANALYSIS_DOCUMENT"] == name


def test_the_gate_sends_only_this_document_and_only_to_instances_it_tagged(template: Template) -> None:
    statements = _role_policy_statements(template, HANDLERS["usage_gate"])
    sends = [s for s in statements if s["Action"] == "ssm:SendCommand"]

    assert [render(resource) for s in sends for resource in as_list(s["Resource"])] == [
        f"arn:${{AWS::Partition}}:ssm:us-east-1:123456789012:document/{DOCUMENT_NAME}",
        "arn:${AWS::Partition}:ec2:us-east-1:123456789012:instance/*",
    ]
    assert "Condition" not in sends[0]
    assert sends[1]["Condition"] == {"StringLike": {"ssm:resourceTag/imdsv2-enforcer:caller-analysis": "*"}}
    actions = {action for s in statements for action in as_list(s["Action"])}
    assert {"ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation"} <= actions


def test_the_launch_watch_cannot_send_commands(template: Template) -> None:
    actions = {a for s in _role_policy_statements(template, HANDLERS["launch_watch"]) for a in as_list(s["Action"])}
    assert not {a for a in actions if a.startswith("ssm:")}


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_both_enforcers_read_the_doors_and_hold_the_opted_in_door_writes(template: Template, name: str) -> None:
    statements = _role_policy_statements(template, HANDLERS[name])
    actions = {action for s in statements for action in as_list(s["Action"])}

    assert actions >= DOOR_READS
    writes = {
        s["Sid"]: [render(r) for r in as_list(s["Resource"])]
        for s in statements
        if s.get("Sid", "").startswith("RequireImdsv2On") and "ec2:" not in str(s["Action"])
    }
    assert writes == {
        "RequireImdsv2OnSageMakerNotebooks": [
            "arn:${AWS::Partition}:sagemaker:us-east-1:123456789012:notebook-instance/*"
        ],
        "RequireImdsv2OnLightsailInstances": ["arn:${AWS::Partition}:lightsail:us-east-1:123456789012:Instance/*"],
    }
    # Beanstalk, Batch, EKS, ECS and EMR: read only.
    for service in ("elasticbeanstalk", "batch", "eks", "ecs", "elasticmapreduce"):
        assert {a for a in actions if a.startswith(f"{service}:")} <= DOOR_READS, service


def test_the_door_reads_are_scoped_to_their_resource_types(template: Template) -> None:
    statements = {s.get("Sid"): s for s in _role_policy_statements(template, HANDLERS["usage_gate"])}

    assert [render(r) for r in as_list(statements["ReadEksNodegroups"]["Resource"])] == [
        "arn:${AWS::Partition}:eks:us-east-1:123456789012:nodegroup/*"
    ]
    assert [render(r) for r in as_list(statements["ReadBeanstalkEnvironments"]["Resource"])] == [
        "arn:${AWS::Partition}:elasticbeanstalk:us-east-1:123456789012:environment/*"
    ]
    assert statements["ListImdsDoors"]["Resource"] == "*"

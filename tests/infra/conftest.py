"""Infra tests: synthesize the real app (``app.build_app``) once per session and share the result."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import cx_api
from aws_cdk.assertions import Template

from emulator import ACCOUNT
from infra.config import DeployConfig

REGIONS = ("us-east-1", "eu-west-1")
SLACK_SECRET_NAME = "imds-enforcer/slack-webhook"
SLACK_SECRET_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BREAK_GLASS_ROLE_ARN = "arn:aws:iam::123456789012:role/BreakGlass"
SLACK_WORKSPACE_ID = "T0123ABCD"
SLACK_CHANNEL_ID = "C0123ABCD"

# Values as `cdk synth -c key=value` delivers them (strings), so the app's coercion is exercised end to end.
CONTEXT: dict[str, Any] = {
    "account": ACCOUNT,
    "regions": ",".join(REGIONS),
    "enforcement_mode": "fix",
    "notification_emails": ["secops@example.com"],
    "set_account_default": "true",
    "rollback_on_rejected": "true",
    "lookback_days": "21",
    "container_host_tag_keys": "team:k8s-node,platform:ecs",
    "log_retention_days": "30",
    "gate_schedule_hours": "4",
    "gate_memory_mb": "1024",
    "gate_timeout_minutes": "10",
    "max_continuations": "12",
    # Everything optional on: the Slack notifier (secret by name, with its customer managed key), e-mail filtering...
    "slack_webhook_secret": SLACK_SECRET_NAME,
    "slack_webhook_secret_kms_key_arn": SLACK_SECRET_KEY_ARN,
    "email_min_severity": "warning",
    # ...and the AWS Chatbot Slack channel on the report topic.
    "slack_workspace_id": SLACK_WORKSPACE_ID,
    "slack_channel_id": SLACK_CHANNEL_ID,
    # The launch-source fixes, and the guardrails as an IAM managed policy (with the RoleDelivery Deny, so the
    # "no wildcard grants" test meets an Action "*" Deny), non-default hop limit and one break-glass role.
    "fix_launch_templates": "true",
    "fix_images": "true",
    "guardrails": "iam",
    "guardrail_max_hop_limit": "3",
    "guardrail_role_delivery": "true",
    "break_glass_role_arns": BREAK_GLASS_ROLE_ARN,
    # The doors outside EC2 fixed (opt-in), and the caller analysis running (its document, SendCommand, tags).
    "fix_sagemaker_notebooks": "true",
    "fix_lightsail_instances": "true",
    "caller_analysis": "run",
    "caller_analysis_max_instances": "3",
    "caller_analysis_minutes": "15",
}


@dataclass(frozen=True)
class Synthesized:
    outdir: Path
    config: DeployConfig
    templates: dict[str, dict[str, Any]]  # stack name -> CloudFormation template
    environments: dict[str, str]  # stack name -> aws://account/region

    def template(self, region: str = REGIONS[0]) -> Template:
        return Template.from_json(self.templates[f"ImdsEnforcer-{region}"])

    def template_path(self, stack_name: str) -> Path:
        return self.outdir / f"{stack_name}.template.json"


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    # Given the CLI's context, when the app synthesizes with cdk-nag installed (findings would raise here)...
    assembly = build_app(context=CONTEXT, outdir=str(outdir)).synth()
    return Synthesized(
        outdir=outdir,
        config=DeployConfig.from_context(CONTEXT, environ={}),
        templates={stack.stack_name: json.loads(json.dumps(stack.template)) for stack in assembly.stacks},
        environments={
            stack.stack_name: f"aws://{stack.environment.account}/{stack.environment.region}"
            for stack in assembly.stacks
        },
    )


@pytest.fixture(scope="session")
def template(synthesized: Synthesized) -> Template:
    return synthesized.template()


# Organization mode: the StackSet path, from a delegated administrator, two OUs (one a root), central reports with
# e-mail and Slack, and the SCP guardrails (created once, by the management side).
ORG_ID = "o-abcdefghij"
ORG_OUS = ("ou-ab12-cdef3456", "r-ab12")
CENTRAL_ACCOUNT = "222222222222"
ORG_CONTEXT: dict[str, Any] = {
    "account": ACCOUNT,
    "regions": ",".join(REGIONS),
    "deployment": "organization",
    "organization_id": ORG_ID,
    "stackset_target_ou_ids": ",".join(ORG_OUS),
    "central_reports_account": CENTRAL_ACCOUNT,
    "stackset_call_as": "delegated_admin",
    "stackset_region_concurrency": "sequential",
    "stackset_max_concurrent_percentage": "50",
    "stackset_failure_tolerance_percentage": "20",
    "enforcement_mode": "fix",
    "notification_emails": ["secops@example.com"],
    "email_min_severity": "warning",
    "slack_webhook_secret": SLACK_SECRET_NAME,
    "guardrails": "scp",
    "scp_target_ids": "r-ab12",
}


@dataclass(frozen=True)
class OrgSynthesized:
    outdir: Path
    config: DeployConfig
    templates: dict[str, dict[str, Any]]  # stack name -> CloudFormation template (the member's too)
    environments: dict[str, str]
    dependencies: dict[str, set[str]]  # stack name -> the stacks it waits for

    def template(self, stack_name: str) -> Template:
        return Template.from_json(self.templates[stack_name])

    def template_path(self, stack_name: str) -> Path:
        if stack_name == "ImdsEnforcerMember":
            return self.outdir / "stackset-member" / "ImdsEnforcerMember.template.json"
        return self.outdir / f"{stack_name}.template.json"


@pytest.fixture(scope="session")
def org_synthesized(tmp_path_factory: pytest.TempPathFactory) -> OrgSynthesized:
    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.org.out")
    # Given organization mode; when the app synthesizes with cdk-nag (the member app too: findings would raise)...
    assembly = build_app(context=ORG_CONTEXT, outdir=str(outdir)).synth()
    templates = {stack.stack_name: json.loads(json.dumps(stack.template)) for stack in assembly.stacks}
    member = outdir / "stackset-member" / "ImdsEnforcerMember.template.json"
    templates["ImdsEnforcerMember"] = json.loads(member.read_text())
    return OrgSynthesized(
        outdir=outdir,
        config=DeployConfig.from_context(ORG_CONTEXT, environ={}),
        templates=templates,
        environments={
            stack.stack_name: f"aws://{stack.environment.account}/{stack.environment.region}"
            for stack in assembly.stacks
        },
        # Stack artifacts only (a stack also depends on its own asset manifest).
        dependencies={
            stack.stack_name: {
                dep.id for dep in stack.dependencies if isinstance(dep, cx_api.CloudFormationStackArtifact)
            }
            for stack in assembly.stacks
        },
    )

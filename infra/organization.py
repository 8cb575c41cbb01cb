"""Organization mode (``deployment: organization``): the enforcer in every account of the target OUs and every
configured region, through one service-managed CloudFormation StackSet, from the same app and cdk.json.

The app then synthesizes, instead of one stack per region:
- ``ImdsEnforcerOrgAssets-<region>`` (management account, each region): the asset bucket the organization may read,
  with the Lambda code and the dependencies layer copied in (``OrgAssets``);
- ``ImdsEnforcerOrgStackSet`` (management account, home region = regions[0]): the StackSet, whose template is the
  member stack (``ImdsEnforcerStack`` with ``member=...``, synthesized in an app of its own with the
  ``BootstraplessSynthesizer``: members have no CDK bootstrap), and the SCP guardrails when configured;
- ``ImdsEnforcerOrgReports`` (security account, home region): the topic every member also reports to, with the
  e-mail subscriptions, the Slack notifier and the chat channel.
``cdk deploy --all`` deploys the first two with the management account's credentials and the third in the security
account through its CDK bootstrap's trust (``cdk bootstrap --trust <management account>``); see the README.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudformation as cloudformation
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from imds_enforcer.domain.organization import ORG_REPORT_KEY_ALIAS, ORG_REPORT_TOPIC_NAME
from infra import FUNCTIONS_DIR
from infra.config import DeployConfig
from infra.constructs.chat_channel import ChatChannel
from infra.constructs.enforcer_function import DependenciesLayer, FunctionWiring, log_retention
from infra.constructs.organization import (
    BUCKET_PREFIX_PARAMETER,
    OU_PARAMETER,
    TRUSTED_ACCOUNT_PARAMETER,
    Artifacts,
    OrgAssets,
    asset_bucket_prefix,
)
from infra.constructs.report_topic import ReportTopic
from infra.constructs.slack_notifier import SlackNotifier
from infra.stack import LAYER_BUILD_DIR, ImdsEnforcerStack, add_guardrails, build_layer

STACKSET_NAME = "imds-enforcer"
STACKSET_STACK_NAME = "ImdsEnforcerOrgStackSet"
REPORTS_STACK_NAME = "ImdsEnforcerOrgReports"
MEMBER_STACK_NAME = "ImdsEnforcerMember"
MEMBER_OUTDIR = "stackset-member"
# CloudFormation takes a StackSet's TemplateBody up to 51,200 bytes, a TemplateURL's object up to 1 MB: the member
# template (about 55 KB with every opt-in on) is published next to the code and referenced by URL.
TEMPLATE_URL_LIMIT = 1_000_000


def assets_stack_name(region: str) -> str:
    return f"ImdsEnforcerOrgAssets-{region}"


class OrgAssetsStack(cdk.Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, env: cdk.Environment, layer_dir: Path
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description="IMDSv2 Enforcer: the code this region's StackSet members deploy, readable by the organization",
        )
        self.assets = OrgAssets(
            self, "Assets", code_dir=FUNCTIONS_DIR, layer_dir=layer_dir, organization_id=config.organization_id
        )
        cdk.CfnOutput(self, "AssetBucketName", value=self.assets.bucket.bucket_name)


def member_template(config: DeployConfig, artifacts: Artifacts, outdir: Path) -> dict[str, Any]:
    """The StackSet's template: the member stack, synthesized (with cdk-nag) in an app of its own, so that
    ``cdk deploy --all`` never deploys it directly. Written to ``outdir`` too, for cfn-lint and for reading."""
    app = cdk.App(outdir=str(outdir))
    ImdsEnforcerStack(
        app,
        MEMBER_STACK_NAME,
        config=config.member_config(),
        member=artifacts,
        # No BootstrapVersion parameter or rule, no asset references: members are not bootstrapped.
        synthesizer=cdk.BootstraplessSynthesizer(),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    template: dict[str, Any] = app.synth().get_stack_by_name(MEMBER_STACK_NAME).template
    return template


def template_json(template: dict[str, Any]) -> str:
    """The member template as published (compact, keys sorted: the same template is the same object key)."""
    body = json.dumps(template, separators=(",", ":"), sort_keys=True)
    if len(body.encode()) > TEMPLATE_URL_LIMIT:
        raise RuntimeError(f"the member template is {len(body.encode())} bytes, over the {TEMPLATE_URL_LIMIT} allowed")
    return body


class OrgStackSetStack(cdk.Stack):
    """The service-managed StackSet (and, when configured, the SCP guardrails) in the management account."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeployConfig,
        env: cdk.Environment,
        template_url: str,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description="IMDSv2 Enforcer: the StackSet that deploys it to every account of the target OUs",
        )
        regions = list(config.regions)
        self.stack_set = cloudformation.CfnStackSet(
            self,
            "StackSet",
            stack_set_name=STACKSET_NAME,
            description="IMDSv2 Enforcer in every account of the target OUs (and every account that joins them)",
            permission_model="SERVICE_MANAGED",
            call_as=config.stackset_call_as.upper(),
            # New accounts in the target OUs get it automatically; an account that leaves loses it.
            auto_deployment=cloudformation.CfnStackSet.AutoDeploymentProperty(
                enabled=True, retain_stacks_on_account_removal=False
            ),
            capabilities=["CAPABILITY_NAMED_IAM"],  # the audit role has a fixed name
            # Non-conflicting operations (an auto-deployment during an update) run at once instead of failing.
            managed_execution={"Active": True},
            operation_preferences=cloudformation.CfnStackSet.OperationPreferencesProperty(
                region_concurrency_type=config.stackset_region_concurrency.upper(),
                region_order=regions,
                max_concurrent_percentage=config.stackset_max_concurrent_percentage,
                failure_tolerance_percentage=config.stackset_failure_tolerance_percentage,
                # Soft: the concurrency is the setting, not capped at the failure tolerance + 1.
                concurrency_mode="SOFT_FAILURE_TOLERANCE",
            ),
            parameters=[
                cloudformation.CfnStackSet.ParameterProperty(
                    parameter_key=BUCKET_PREFIX_PARAMETER, parameter_value=asset_bucket_prefix(self.account)
                ),
                cloudformation.CfnStackSet.ParameterProperty(
                    parameter_key=TRUSTED_ACCOUNT_PARAMETER, parameter_value=self.account
                ),
            ],
            # One group per OU, so each stack instance names the OU it was deployed through.
            stack_instances_group=[
                cloudformation.CfnStackSet.StackInstancesProperty(
                    deployment_targets=cloudformation.CfnStackSet.DeploymentTargetsProperty(
                        organizational_unit_ids=[target]
                    ),
                    regions=regions,
                    parameter_overrides=[
                        cloudformation.CfnStackSet.ParameterProperty(parameter_key=OU_PARAMETER, parameter_value=target)
                    ],
                )
                for target in config.stackset_target_ou_ids
            ],
            template_url=template_url,
        )
        add_guardrails(self, config=config, region=config.home_region)
        cdk.CfnOutput(self, "StackSetName", value=STACKSET_NAME)
        cdk.CfnOutput(self, "OrganizationReportTopicArn", value=config.central_report_topic_arn)


class OrgReportsStack(cdk.Stack):
    """The security account's report topic: every member publishes here too (the organization may, no one else);
    the e-mail subscriptions, the Slack notifier and the chat channel of organization mode live here."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, env: cdk.Environment, layer_dir: Path
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description="IMDSv2 Enforcer: the organization's report topic, where every member account also reports",
        )
        report = ReportTopic(
            self,
            "Report",
            notification_emails=config.notification_emails,
            email_min_severity=config.email_min_severity,
            topic_name=ORG_REPORT_TOPIC_NAME,
            key_alias=ORG_REPORT_KEY_ALIAS,
            organization_id=config.organization_id,
        )
        if config.slack_enabled:
            layer = DependenciesLayer(self, "Dependencies", layer_dir=build_layer(layer_dir))
            slack = SlackNotifier(
                self,
                "SlackNotifier",
                topic=report.topic,
                webhook_secret=config.runtime.SLACK_WEBHOOK_SECRET,
                webhook_secret_kms_key_arn=config.slack_webhook_secret_kms_key_arn,
                wiring=FunctionWiring.of(
                    code_dir=FUNCTIONS_DIR,
                    layers=[layer.layer],
                    environment=config.slack_environment(),
                    log_retention=log_retention(config.log_retention_days),
                ),
            )
            cdk.CfnOutput(self, "SlackNotifierFunctionName", value=slack.enforcer.function.function_name)
        if config.chat_channel_enabled:
            ChatChannel(
                self,
                "ChatChannel",
                topic=report.topic,
                topic_key=report.key,
                slack_workspace_id=config.slack_workspace_id,
                slack_channel_id=config.slack_channel_id,
            )
        cdk.CfnOutput(self, "OrganizationReportTopicArn", value=report.topic.topic_arn)


def add_organization(app: cdk.App, config: DeployConfig, *, layer_dir: Path = LAYER_BUILD_DIR) -> None:
    """The organization mode's stacks (see the module's docstring), in ``app``."""
    built_layer = build_layer(layer_dir)
    assets = [
        OrgAssetsStack(
            app,
            assets_stack_name(region),
            config=config,
            env=cdk.Environment(account=config.account, region=region),
            layer_dir=built_layer,
        )
        for region in config.regions
    ]
    # The same content has the same key in every region (checked: a member names one key for all).
    (artifacts,) = {stack.assets.artifacts for stack in assets}
    template = member_template(config, artifacts, Path(app.outdir) / MEMBER_OUTDIR)
    (home,) = [stack for stack in assets if stack.region == config.home_region]
    stack_set = OrgStackSetStack(
        app,
        STACKSET_STACK_NAME,
        config=config,
        env=cdk.Environment(account=config.account, region=config.home_region),
        template_url=home.assets.publish_template(template_json(template)),
    )
    # Every region's code is in place before any stack instance is created or updated.
    for stack in assets:
        stack_set.add_stack_dependency(stack)
    OrgReportsStack(
        app,
        REPORTS_STACK_NAME,
        config=config,
        env=cdk.Environment(account=config.central_reports_account, region=config.home_region),
        layer_dir=built_layer,
    )

"""The usage gate: a scheduled sweep that requires IMDSv2 on instances proven not to use IMDSv1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.constructs.enforcer_function import EnforcerFunction
from infra.constructs.nag import acknowledge, nag_resource
from infra.constructs.permissions import ResourceArns, usage_gate_statements

HANDLER = "imds_enforcer.handlers.usage_gate.handler"


class UsageGate(Construct):
    """The usage gate Lambda and its schedule.

    ``fix_launch_templates`` / ``fix_images`` grant the writes that fix those launch sources (opt-in).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
        schedule_hours: int,
        memory_mb: int,
        timeout_minutes: int,
        exempt_tag_key: str,
        set_account_default: bool,
        fix_launch_templates: bool,
        fix_images: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        arns = ResourceArns.of(self)
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            handler=HANDLER,
            description="IMDSv2 Enforcer usage gate: requires IMDSv2 where MetadataNoToken stayed at zero",
            code_dir=code_dir,
            layers=layers,
            environment=environment,
            statements=usage_gate_statements(
                instance_arn=arns.instance,
                exempt_tag_key=exempt_tag_key,
                set_account_default=set_account_default,
                launch_template_arn=arns.launch_template,
                image_arn=arns.image,
                fix_launch_templates=fix_launch_templates,
                fix_images=fix_images,
            ),
            memory_size=memory_mb,
            timeout=cdk.Duration.minutes(timeout_minutes),
            # Never two sweeps at once: they would race to switch (and report) the same instances.
            reserved_concurrency=1,
            log_retention=log_retention,
        )
        policy = self.enforcer.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeInstances, cloudwatch:GetMetricData, (when enabled) ec2:Get/ModifyInstanceMetadataDefaults, "
            "the launch-source reads ec2:DescribeLaunchTemplates/-Versions, DescribeImages and "
            "autoscaling:DescribeAutoScalingGroups, DescribeLaunchConfigurations support no resource-level "
            "permissions; IAM only accepts Resource '*' for them.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(self, arns.instance)}]",
            "The gate sweeps every instance of this account and region, so ModifyInstanceMetadataOptions and "
            "CreateTags are scoped to instance/* (not to other resource types); CreateTags is further limited by "
            "aws:TagKeys to the service's two tags and the exemption tag.",
        )
        if fix_launch_templates:
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::{nag_resource(self, arns.launch_template)}]",
                "Opt-in (fix_launch_templates): the gate sweeps every launch template of this account and region, so "
                "CreateLaunchTemplateVersion and ModifyLaunchTemplate are scoped to launch-template/* here only.",
            )
        if fix_images:
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::{nag_resource(self, arns.image)}]",
                "Opt-in (fix_images): the gate sweeps every AMI in use in this region, so ModifyImageAttribute is "
                "scoped to image/* of this region (AMI ARNs carry no account; only the owner may modify one).",
            )

        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description="Runs the IMDSv2 usage gate sweep",
            schedule=events.Schedule.rate(cdk.Duration.hours(schedule_hours)),
            targets=[
                targets.LambdaFunction(
                    self.enforcer.function,
                    dead_letter_queue=self.enforcer.dead_letter_queue,
                    retry_attempts=2,
                    # The gate is stateless: a missed sweep is simply done by the next one.
                    max_event_age=cdk.Duration.hours(1),
                )
            ],
        )

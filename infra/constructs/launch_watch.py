"""The launch watch: reacts within seconds to a launched (or re-opened) instance that still accepts IMDSv1."""

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
from infra.constructs.permissions import launch_watch_statements

HANDLER = "imds_enforcer.handlers.launch_watch.handler"

# CloudTrail events need a trail in the account; the state-change events arrive without one.
CLOUDTRAIL_PATTERN = events.EventPattern(
    source=["aws.ec2"],
    detail_type=["AWS API Call via CloudTrail"],
    detail={"eventSource": ["ec2.amazonaws.com"], "eventName": ["RunInstances", "ModifyInstanceMetadataOptions"]},
)
STATE_CHANGE_PATTERN = events.EventPattern(
    source=["aws.ec2"],
    detail_type=["EC2 Instance State-change Notification"],
    detail={"state": ["pending", "running"]},
)


class LaunchWatch(Construct):
    """The launch watch Lambda and the two EventBridge rules that feed it."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        instance_arn = cdk.Stack.of(self).format_arn(service="ec2", resource="instance", resource_name="*")
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            handler=HANDLER,
            description="IMDSv2 Enforcer launch watch: flags or fixes instances launched with IMDSv1 allowed",
            code_dir=code_dir,
            layers=layers,
            environment=environment,
            statements=launch_watch_statements(instance_arn=instance_arn),
            memory_size=256,
            timeout=cdk.Duration.seconds(60),
            # Caps the EC2 API calls a launch storm can cause; excess events wait in Lambda's async queue.
            # No reservation: on a new account (concurrency quota 10) reserving would fail the deploy; the modifies
            # are paced and retried, and EventBridge retries a throttled invoke.
            reserved_concurrency=None,
            log_retention=log_retention,
        )
        policy = self.enforcer.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ec2:DescribeInstances supports no resource-level permissions; IAM only accepts Resource '*' for it.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(self, instance_arn)}]",
            "The watched instance can be any instance of this account and region, so ModifyInstanceMetadataOptions "
            "and CreateTags are scoped to instance/* here (not to other resource types); CreateTags is further "
            "limited by aws:TagKeys to the service's own two tags.",
        )

        # Invoking the function is asynchronous: EventBridge only retries when the invoke call itself fails.
        target = targets.LambdaFunction(
            self.enforcer.function,
            dead_letter_queue=self.enforcer.dead_letter_queue,
            retry_attempts=4,
            # A launch an hour old is caught by the usage gate's next sweep anyway.
            max_event_age=cdk.Duration.hours(1),
        )
        self.cloudtrail_rule = events.Rule(
            self,
            "ApiCallRule",
            description="RunInstances and ModifyInstanceMetadataOptions calls (via CloudTrail) to the launch watch",
            event_pattern=CLOUDTRAIL_PATTERN,
            targets=[target],
        )
        self.state_change_rule = events.Rule(
            self,
            "StateChangeRule",
            description="EC2 instances entering pending or running to the launch watch",
            event_pattern=STATE_CHANGE_PATTERN,
            targets=[target],
        )

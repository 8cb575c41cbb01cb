"""The launch watch: reacts within seconds to a launched (or re-opened) instance that still accepts IMDSv1."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from constructs import Construct

from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.permissions import ResourceArns, launch_watch_permissions

HANDLER = "imds_enforcer.handlers.launch_watch.handler"

# CloudTrail events need a trail in the account; the state-change events arrive without one.
# Besides launches, the calls that create or change where launches come from: a launch template (or a new
# version of one), its default version, and a registered AMI.
CLOUDTRAIL_PATTERN = events.EventPattern(
    source=["aws.ec2"],
    detail_type=["AWS API Call via CloudTrail"],
    detail={
        "eventSource": ["ec2.amazonaws.com"],
        "eventName": [
            "RunInstances",
            "ModifyInstanceMetadataOptions",
            "CreateLaunchTemplate",
            "CreateLaunchTemplateVersion",
            "ModifyLaunchTemplate",
            "RegisterImage",
        ],
    },
)
# Launch configurations are Auto Scaling's: another source, so a rule of their own (one pattern listing both
# sources and both event sources would also match, say, an EC2 event named like an Auto Scaling call).
LAUNCH_CONFIGURATION_PATTERN = events.EventPattern(
    source=["aws.autoscaling"],
    detail_type=["AWS API Call via CloudTrail"],
    detail={"eventSource": ["autoscaling.amazonaws.com"], "eventName": ["CreateLaunchConfiguration"]},
)
STATE_CHANGE_PATTERN = events.EventPattern(
    source=["aws.ec2"],
    detail_type=["EC2 Instance State-change Notification"],
    detail={"state": ["pending", "running"]},
)


class LaunchWatch(Construct):
    """The launch watch Lambda and the three EventBridge rules that feed it.

    ``fix_launch_templates`` / ``fix_images`` grant the writes that fix those launch sources (opt-in).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        wiring: FunctionWiring,
        ledger_table_arn: str,
        exempt_tag_key: str,
        fix_launch_templates: bool,
        fix_images: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        arns = ResourceArns.of(self)
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            name="launch-watch",
            wiring=wiring,
            handler=HANDLER,
            description="IMDSv2 Enforcer launch watch: flags or fixes instances launched with IMDSv1 allowed",
            permissions=launch_watch_permissions(
                instance_arn=arns.instance,
                exempt_tag_key=exempt_tag_key,
                launch_template_arn=arns.launch_template,
                image_arn=arns.image,
                ledger_table_arn=ledger_table_arn,
                fix_launch_templates=fix_launch_templates,
                fix_images=fix_images,
            ),
            memory_size=256,
            timeout=cdk.Duration.seconds(60),
            # Caps the EC2 API calls a launch storm can cause; excess events wait in Lambda's async queue.
            # No reservation: on a new account (concurrency quota 10) reserving would fail the deploy; the modifies
            # are paced and retried, and EventBridge retries a throttled invoke.
            reserved_concurrency=None,
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
            description="Launches, metadata option changes, launch templates and AMIs (CloudTrail) to the launch watch",
            event_pattern=CLOUDTRAIL_PATTERN,
            targets=[target],
        )
        self.launch_configuration_rule = events.Rule(
            self,
            "LaunchConfigurationRule",
            description="CreateLaunchConfiguration calls (via CloudTrail) to the launch watch",
            event_pattern=LAUNCH_CONFIGURATION_PATTERN,
            targets=[target],
        )
        self.state_change_rule = events.Rule(
            self,
            "StateChangeRule",
            description="EC2 instances entering pending or running to the launch watch",
            event_pattern=STATE_CHANGE_PATTERN,
            targets=[target],
        )

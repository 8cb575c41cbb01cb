"""The launch watch: reacts within seconds to a launched (or re-opened) instance that still accepts IMDSv1."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imds_enforcer.domain.door_events import DOOR_EVENT_NAMES, DOOR_EVENT_SOURCES
from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.permissions import DoorArns, ResourceArns, launch_watch_permissions

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
# The IMDS doors outside EC2 instances: the calls that create one, or change its IMDS setting (SageMaker notebooks,
# Lightsail instances, Beanstalk environments, Batch compute environments, EKS node groups, ECS capacity providers,
# EMR clusters). Each service's calls have their own event names, so one rule serves them all.
DOOR_PATTERN = events.EventPattern(
    source=sorted(DOOR_EVENT_SOURCES),
    detail_type=["AWS API Call via CloudTrail"],
    detail={"eventSource": sorted(DOOR_EVENT_SOURCES.values()), "eventName": DOOR_EVENT_NAMES},
)
# A burst (an Auto Scaling group scaling out by 50 sends 50 `running` events) waits this long in the queue so one
# invocation, and one report, takes it whole; a lone launch is enforced at most this much later.
BATCHING_WINDOW = cdk.Duration.seconds(30)
BATCH_SIZE = 100
FUNCTION_TIMEOUT = cdk.Duration.seconds(60)
# Received, handled and, on failure, received again: three receives are the first try and two retries, as Lambda's
# own asynchronous retries were before the queue.
MAX_RECEIVES = 3
STATE_CHANGE_PATTERN = events.EventPattern(
    source=["aws.ec2"],
    detail_type=["EC2 Instance State-change Notification"],
    detail={"state": ["pending", "running"]},
)


class LaunchWatch(Construct):
    """The launch watch Lambda, the three EventBridge rules that feed it, and the queue between them.

    EventBridge delivers to an SQS queue, which the function reads in batches (up to BATCH_SIZE events, waiting up
    to BATCHING_WINDOW): a burst of launches is one invocation and one report instead of one Slack post per
    instance. The function still takes a bare EventBridge event (a manual invoke, or the rules pointed back at it).

    ``fix_launch_templates`` / ``fix_images`` grant the writes that fix those launch sources (opt-in);
    ``fix_sagemaker_notebooks`` / ``fix_lightsail_instances`` those of the doors outside EC2 (opt-in).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        wiring: FunctionWiring,
        ledger_table_arn: str,
        exempt_tag_key: str,
        exemption_parameter: str = "",
        fix_launch_templates: bool,
        fix_images: bool,
        fix_sagemaker_notebooks: bool = False,
        fix_lightsail_instances: bool = False,
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
                exemption_parameter_arn=ResourceArns.parameter(self, exemption_parameter),
                launch_template_arn=arns.launch_template,
                image_arn=arns.image,
                ledger_table_arn=ledger_table_arn,
                fix_launch_templates=fix_launch_templates,
                fix_images=fix_images,
                doors=DoorArns.of(self),
                fix_sagemaker_notebooks=fix_sagemaker_notebooks,
                fix_lightsail_instances=fix_lightsail_instances,
            ),
            memory_size=256,
            timeout=FUNCTION_TIMEOUT,
            # No reservation: on a new account (concurrency quota 10) reserving would fail the deploy. A launch storm
            # waits in the queue, a hundred events an invocation, and the modifies are paced and retried.
            reserved_concurrency=None,
        )
        self.queue = sqs.Queue(
            self,
            "Events",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            # AWS's guidance for a queue feeding Lambda: six times the function's timeout.
            visibility_timeout=cdk.Duration.seconds(FUNCTION_TIMEOUT.to_seconds() * 6),
            # A launch an hour old is caught by the usage gate's next sweep anyway.
            retention_period=cdk.Duration.hours(1),
            dead_letter_queue=sqs.DeadLetterQueue(
                max_receive_count=MAX_RECEIVES, queue=self.enforcer.dead_letter_queue
            ),
        )
        self.enforcer.function.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=BATCH_SIZE,
                max_batching_window=BATCHING_WINDOW,
                report_batch_item_failures=True,
            )
        )
        # EventBridge only retries when the delivery to the queue itself fails.
        target = targets.SqsQueue(
            self.queue,
            dead_letter_queue=self.enforcer.dead_letter_queue,
            retry_attempts=4,
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
        self.door_rule = events.Rule(
            self,
            "DoorRule",
            description="SageMaker, Lightsail, Beanstalk, Batch, EKS, ECS, EMR calls (CloudTrail) to the launch watch",
            event_pattern=DOOR_PATTERN,
            targets=[target],
        )
        self.state_change_rule = events.Rule(
            self,
            "StateChangeRule",
            description="EC2 instances entering pending or running to the launch watch",
            event_pattern=STATE_CHANGE_PATTERN,
            targets=[target],
        )

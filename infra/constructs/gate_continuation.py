"""The usage gate's continuation: where a sweep waits between runs, and how the next run is started.

- The sweep bucket (S3): one object, the sweep in progress (its plan, its findings so far), gzip JSON of a few MB
  at 50,000 instances, far beyond one DynamoDB item's 400 KB. Encrypted (S3-managed keys), TLS only, never public,
  no versioning (the object is rewritten by every run and deleted when the sweep's report is out), and a lifecycle
  rule that expires what a broken sweep might leave.
- The schedule group (EventBridge Scheduler): each continuation is a one-time schedule in it, created by the gate at
  run time (`at(...)`, deleting itself once it has fired).
- The scheduler role: what EventBridge Scheduler assumes to invoke the gate (and nothing else), and to put a delivery
  that keeps failing into the gate's dead-letter queue. Only this account's schedules may assume it.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from imds_enforcer.aws.sweep_store import STATE_KEY
from infra.constructs.enforcer_function import EnforcerFunction
from infra.constructs.nag import acknowledge
from infra.constructs.permissions import Permission, gate_continuation_permissions

STATE_PREFIX = STATE_KEY.split("/", 1)[0] + "/"
# Longer than any sweep (MAX_CONTINUATIONS x 15 minutes is hours): only a broken sweep's state is ever expired.
STATE_EXPIRY = cdk.Duration.days(3)


class GateContinuation(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.bucket = s3.Bucket(
            self,
            "SweepBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=False,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAbandonedSweeps",
                    expiration=STATE_EXPIRY,
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
            # Empty but for a sweep in progress (deleted when its report is out): nothing to keep after a teardown.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "The bucket holds one object, the usage gate's sweep in progress, written and read only by the gate's own "
            "role and deleted when the sweep's report is published; CloudTrail data events can record access if an "
            "account wants them. A server access log bucket would outlive what it logs.",
        )
        self.group = scheduler.ScheduleGroup(self, "Schedules", removal_policy=cdk.RemovalPolicy.DESTROY)
        self.schedule_arns = stack.format_arn(
            service="scheduler",
            resource="schedule",
            resource_name=f"{self.group.schedule_group_name}/*",
            arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
        )
        # Confused deputy: only schedules of this account may make EventBridge Scheduler assume the role.
        self.scheduler_role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description="EventBridge Scheduler: starts the IMDSv2 usage gate's next run of a sweep",
            # Not under the service's path: that path marks the roles that change instances, which the guardrails
            # let through; this one only starts the gate.
        )

    def permissions(self) -> list[Permission]:
        """What the gate needs: its sweep object, its schedules, and passing the scheduler role to them."""
        return gate_continuation_permissions(
            bucket_arn=self.bucket.bucket_arn,
            state_prefix=STATE_PREFIX,
            schedule_arns=self.schedule_arns,
            scheduler_role_arn=self.scheduler_role.role_arn,
        )

    def connect(self, gate: EnforcerFunction) -> None:
        """The scheduler role may invoke this gate only (and fail into its dead-letter queue); the gate learns where
        its continuation lives. (The role's policy refers to the function, not the other way round: no cycle.)"""
        self.scheduler_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="StartTheNextGateRun",
                actions=["lambda:InvokeFunction"],
                resources=[gate.function.function_arn],
            )
        )
        self.scheduler_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="UndeliveredContinuations",
                actions=["sqs:SendMessage"],
                resources=[gate.dead_letter_queue.queue_arn],
            )
        )
        environment = {
            "SWEEP_STATE_BUCKET": self.bucket.bucket_name,
            "CONTINUATION_SCHEDULE_GROUP": self.group.schedule_group_name,
            "CONTINUATION_ROLE_ARN": self.scheduler_role.role_arn,
            "CONTINUATION_DEAD_LETTER_ARN": gate.dead_letter_queue.queue_arn,
        }
        for name, value in environment.items():
            gate.function.add_environment(name, value)

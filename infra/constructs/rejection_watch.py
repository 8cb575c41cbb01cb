"""The rejection watch: within minutes of the first IMDSv1 call rejected anywhere in the account and region, a
report names the instances (and, opt-in, rolls back the ones this service switched)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from constructs import Construct

from imds_enforcer.domain.metric_names import EC2_NAMESPACE, NO_TOKEN_REJECTED
from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.permissions import ResourceArns, rejection_watch_permissions

HANDLER = "imds_enforcer.handlers.rejection_watch.handler"
# EC2 publishes MetadataNoTokenRejected per instance only (no account-wide aggregate for basic monitoring), so the
# alarm reads a Metrics Insights query over every instance's series: one series, summed, whatever the fleet size.
# (Metrics Insights reads the last 3 hours: 5 minutes x 1 period is well inside.)
REJECTED_ACROSS_INSTANCES = f'SELECT SUM({NO_TOKEN_REJECTED}) FROM SCHEMA("{EC2_NAMESPACE}", InstanceId)'  # noqa: S608
ALARM_PERIOD = cdk.Duration.minutes(5)


class RejectionWatch(Construct):
    """The alarm on rejected IMDSv1 calls, the EventBridge rule on its state change, and the function it runs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        wiring: FunctionWiring,
        exempt_tag_key: str,
        exemption_parameter: str = "",
        rollback: bool,
        ledger_table_arn: str,
    ) -> None:
        super().__init__(scope, construct_id)
        arns = ResourceArns.of(self)
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            name="rejection-watch",
            wiring=wiring,
            handler=HANDLER,
            description="IMDSv2 Enforcer rejection watch: names (and opt-in rolls back) instances rejecting IMDSv1",
            permissions=rejection_watch_permissions(
                instance_arn=arns.instance,
                exempt_tag_key=exempt_tag_key,
                exemption_parameter_arn=ResourceArns.parameter(self, exemption_parameter),
                rollback=rollback,
                ledger_table_arn=ledger_table_arn,
            ),
            memory_size=256,
            timeout=cdk.Duration.minutes(2),
            reserved_concurrency=None,
        )
        self.alarm = cloudwatch.Alarm(
            self,
            "RejectedNowAlarm",
            alarm_description=(
                "HIGH: an instance rejected IMDSv1 calls in the last 5 minutes (EC2 MetadataNoTokenRejected, any "
                "instance): a workload may be broken. The rejection watch names the instances in a report."
            ),
            metric=cloudwatch.MathExpression(
                expression=REJECTED_ACROSS_INSTANCES,
                using_metrics={},
                period=ALARM_PERIOD,
                label="IMDSv1 calls rejected, all instances",
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            # No instance rejects anything: the query returns no datapoint, which is not a rejection.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.rule = events.Rule(
            self,
            "AlarmRule",
            description="The rejected-IMDSv1 alarm going into ALARM runs the rejection watch",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[self.alarm.alarm_arn],
                detail={"state": {"value": ["ALARM"]}},
            ),
            # Past an hour, the gate's next sweep reports the rejections anyway.
            targets=[self.enforcer.as_target(retry_attempts=4, max_event_age=cdk.Duration.hours(1))],
        )

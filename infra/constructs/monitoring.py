"""The operator's view: one dashboard of the account's IMDSv1 usage and the service's own health, and the alarms.

Metric names come from the Lambda code (``imds_enforcer.observability``, ``imds_enforcer.aws.cloudwatch``): the same
constants the handlers emit and read, so a rename cannot silently empty a graph or mute an alarm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_sns as sns
from constructs import Construct

from imds_enforcer.domain.metric_names import (
    CONTINUATIONS,
    EC2_NAMESPACE,
    MODIFY_THROTTLES,
    NAMESPACE,
    NO_TOKEN,
    NO_TOKEN_REJECTED,
    OPTIONAL_REMAINING,
    SERVICE,
    action_metric,
)
from imds_enforcer.domain.report import Action
from infra.constructs.enforcer_function import EnforcerFunction

HOUR = cdk.Duration.hours(1)
DAY = cdk.Duration.days(1)
# Lambda errors are counted per minute; five minutes is quick enough to act on and calm enough not to flap.
ERROR_PERIOD = cdk.Duration.minutes(5)


def account_search(metric_name: str, period: cdk.Duration = HOUR) -> str:
    """Every instance's series of an EC2 metric in this account and region (SEARCH finds instances as they come)."""
    return f"SEARCH('{{{EC2_NAMESPACE},InstanceId}} MetricName=\"{metric_name}\"', 'Sum', {int(period.to_seconds())})"


def service_metric(metric_name: str, *, statistic: str, period: cdk.Duration, label: str) -> cloudwatch.Metric:
    """A metric the handlers emit: Powertools adds the ``service`` dimension to every one."""
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=metric_name,
        dimensions_map={"service": SERVICE},
        statistic=statistic,
        period=period,
        label=label,
    )


class Monitoring(Construct):
    """Dashboard and alarms; every alarm notifies ``alarm_topic`` (the report topic) when it goes into ALARM."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: Mapping[str, EnforcerFunction],
        alarm_topic: sns.ITopic,
        alarms: Sequence[cloudwatch.Alarm] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        alarm_action = actions.SnsAction(alarm_topic)

        rejected = service_metric(action_metric(Action.REJECTED), statistic="Sum", period=HOUR, label="Rejected")
        self.alarms: list[cloudwatch.Alarm] = [
            cloudwatch.Alarm(
                self,
                "RejectedAlarm",
                alarm_description=(
                    "HIGH: an instance the service switched to IMDSv2 rejected IMDSv1 calls (MetadataNoTokenRejected): "
                    "a workload may be broken. See the report on this topic for the instance."
                ),
                metric=rejected,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                # No run, no datapoint: silence is not a rejection.
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        ]
        for name, enforcer in functions.items():
            self.alarms.append(
                cloudwatch.Alarm(
                    self,
                    f"{name}ErrorsAlarm",
                    alarm_description=(
                        f"The {name} Lambda failed with an unhandled error; its dead-letter queue keeps the event."
                    ),
                    metric=enforcer.function.metric_errors(period=ERROR_PERIOD, statistic="Sum"),
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
            self.alarms.append(
                cloudwatch.Alarm(
                    self,
                    f"{name}DeadLetterAlarm",
                    alarm_description=(
                        f"Events or reports of the {name} Lambda are waiting in its dead-letter queue: inspect, then "
                        "redrive or purge them."
                    ),
                    metric=enforcer.dead_letter_queue.metric_approximate_number_of_messages_visible(
                        period=ERROR_PERIOD, statistic="Maximum"
                    ),
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
        # Alarms made next to what they watch (the rejection watch's): notified and shown like the others.
        self.alarms.extend(alarms)
        for alarm in self.alarms:
            alarm.add_alarm_action(alarm_action)

        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=cdk.Duration.days(14),
            widgets=[
                [_markdown()],
                self._imdsv1_usage_row(),
                self._progress_row(rejected),
                self._pacing_row(),
                [
                    cloudwatch.GraphWidget(
                        title="Handler errors",
                        left=[e.function.metric_errors(period=ERROR_PERIOD, label=n) for n, e in functions.items()],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Handler duration (p99)",
                        left=[
                            e.function.metric_duration(period=ERROR_PERIOD, statistic="p99", label=n)
                            for n, e in functions.items()
                        ],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Dead-letter queue depth",
                        left=[
                            e.dead_letter_queue.metric_approximate_number_of_messages_visible(
                                period=ERROR_PERIOD, statistic="Maximum", label=n
                            )
                            for n, e in functions.items()
                        ],
                        width=8,
                    ),
                ],
                [cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24)],
            ],
        )

    @staticmethod
    def _imdsv1_usage_row() -> list[cloudwatch.IWidget]:
        row: list[cloudwatch.IWidget] = []
        for metric_name, meaning in (
            (NO_TOKEN, "IMDSv1 calls (MetadataNoToken)"),
            (NO_TOKEN_REJECTED, "IMDSv1 calls rejected (MetadataNoTokenRejected)"),
        ):
            search = account_search(metric_name)
            row.append(
                cloudwatch.GraphWidget(
                    title=f"{meaning}, per instance and in total",
                    left=[
                        cloudwatch.MathExpression(expression=search, label="", period=HOUR),
                        cloudwatch.MathExpression(expression=f"SUM({search})", label="All instances", period=HOUR),
                    ],
                    legend_position=cloudwatch.LegendPosition.HIDDEN,
                    width=12,
                )
            )
        return row

    @staticmethod
    def _pacing_row() -> list[cloudwatch.IWidget]:
        return [
            cloudwatch.GraphWidget(
                title="Modifies throttled by EC2 (RequestLimitExceeded: the gate slowed down, nothing failed)",
                left=[service_metric(MODIFY_THROTTLES, statistic="Sum", period=HOUR, label="Throttled")],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Gate continuations (a sweep carried on past one run's time budget)",
                left=[service_metric(CONTINUATIONS, statistic="Sum", period=HOUR, label="Continuations")],
                width=12,
            ),
        ]

    @staticmethod
    def _progress_row(rejected: cloudwatch.Metric) -> list[cloudwatch.IWidget]:
        return [
            cloudwatch.GraphWidget(
                title="Instances still accepting IMDSv1",
                left=[service_metric(OPTIONAL_REMAINING, statistic="Maximum", period=HOUR, label="Optional")],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Enforcements per day",
                left=[service_metric(action_metric(Action.ENFORCED), statistic="Sum", period=DAY, label="Enforced")],
                width=6,
            ),
            cloudwatch.GraphWidget(title="Rejections after enforcement", left=[rejected], width=6),
            cloudwatch.GraphWidget(
                title="Failed AWS calls",
                left=[service_metric(action_metric(Action.FAILED), statistic="Sum", period=HOUR, label="Failed")],
                width=6,
            ),
        ]


def _markdown() -> cloudwatch.TextWidget:
    return cloudwatch.TextWidget(
        markdown=(
            "# IMDSv2 Enforcer\n"
            "Goal: *IMDSv1 calls* at zero and *instances still accepting IMDSv1* falling to zero. "
            "Any *rejection* means an instance switched by the service still tries IMDSv1: read its report."
        ),
        width=24,
        height=2,
    )

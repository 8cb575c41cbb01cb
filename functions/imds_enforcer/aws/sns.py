"""SNS adapter: publish a report as one or more messages, with attributes subscription filters can use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated
from imds_enforcer.domain.report import OutgoingMessage, Report, render_messages
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient


def publish_report(
    report: Report, *, topic_arn: str, central_topic_arn: str = "", organizational_unit: str = ""
) -> list[str]:
    """Publish every part of the report; returns the message ids. A report without findings publishes nothing.

    Organization mode: every part also goes to the security account's topic (`central_topic_arn`, reached in its
    own region), and the report names the account's OU. The local topic comes first, so the account's own team gets
    its report whatever happens centrally; a central failure is then raised, so that it is seen (handler errors,
    dead-letter queue) rather than lost. The ids returned are the local topic's.
    """
    if organizational_unit:
        report = report.model_copy(update={"organizational_unit": organizational_unit})
    messages = render_messages(report)
    if messages and not topic_arn:
        # Never quiet: without a topic the report still reaches the logs in full.
        logger.warning(
            "REPORT_TOPIC_ARN is not set: report written to the log only", extra={"report": report.to_json()}
        )
    message_ids = _publish(messages, topic_arn, clients.sns()) if topic_arn else []
    if messages and topic_arn:
        logger.info("report published", extra={"parts": len(messages), "counts": report.counts})
    if messages and central_topic_arn:
        try:
            _publish(messages, central_topic_arn, clients.sns(_region_of(central_topic_arn)))
        except AwsError as error:
            logger.error(
                "report not delivered to the organization's topic",
                extra={"topic_arn": central_topic_arn, "code": error.code, "operation": error.operation},
            )
            raise
        logger.info("report sent to the organization's topic", extra={"parts": len(messages)})
    return message_ids


def _publish(messages: Sequence[OutgoingMessage], topic_arn: str, sns: SNSClient) -> list[str]:
    message_ids = []
    for message in messages:
        with translated("Publish"):
            response = sns.publish(
                TopicArn=topic_arn,
                Subject=message.subject,
                Message=message.body,
                MessageAttributes={
                    name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items()
                },
            )
        message_ids.append(response["MessageId"])
    return message_ids


def _region_of(topic_arn: str) -> str:
    # arn:<partition>:sns:<region>:<account>:<name>
    return topic_arn.split(":")[3]


def publish(report: Report, settings: Settings) -> list[str]:
    """Publish where the settings say: the stack's topic, and in organization mode the security account's too."""
    return publish_report(
        report,
        topic_arn=settings.REPORT_TOPIC_ARN,
        central_topic_arn=settings.CENTRAL_REPORT_TOPIC_ARN,
        organizational_unit=settings.ORGANIZATIONAL_UNIT,
    )

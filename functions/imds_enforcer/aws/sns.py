"""SNS adapter: publish a report as one or more messages, with attributes subscription filters can use.

A report never goes nowhere: a part that cannot be published is written to the log in full (its JSON body, as it
would have reached the topic), the other parts are still tried, and then the publish raises, so Lambda's retry and
the dead-letter queue see the failure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated
from imds_enforcer.domain.report import Finding, OutgoingMessage, Report, render_messages
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient


class ReportNotPublishedError(AwsError):
    """Some parts of a report were not published (each logged in full); `published` are the findings that reached
    the account's own topic."""

    def __init__(self, error: AwsError, *, published: list[Finding], failed_parts: int, parts: int) -> None:
        super().__init__(
            error.operation,
            error.code,
            f"{failed_parts} of {parts} report part(s) not published, logged in full instead"
            + (f"; {error.message}" if error.message else ""),
            retry_attempts=error.retry_attempts,
            status=error.status,
            answered=error.answered,
        )
        self.published = published


def publish_report(
    report: Report, *, topic_arn: str, central_topic_arn: str = "", organizational_unit: str = ""
) -> list[str]:
    """Publish every part of the report; returns the message ids. A report without findings publishes nothing.

    Organization mode: every part also goes to the security account's topic (`central_topic_arn`, reached in its
    own region), and the report names the account's OU. The local topic comes first, so the account's own team gets
    its report whatever happens centrally; the central topic is tried even when a local part failed. Any failure is
    raised after both were tried (ReportNotPublishedError, naming the findings the local topic took), so that it is
    seen (handler errors, dead-letter queue) rather than lost. The ids returned are the local topic's.
    """
    if organizational_unit:
        report = report.model_copy(update={"organizational_unit": organizational_unit})
    messages = render_messages(report)
    if messages and not topic_arn:
        # Never quiet: without a topic the report still reaches the logs in full.
        logger.warning(
            "REPORT_TOPIC_ARN is not set: report written to the log only", extra={"report": report.to_json()}
        )
    local_failure: ReportNotPublishedError | None = None
    message_ids: list[str] = []
    if messages and topic_arn:
        try:
            message_ids = _publish(messages, topic_arn, clients.sns())
        except ReportNotPublishedError as error:
            local_failure = error
        else:
            logger.info("report published", extra={"parts": len(messages), "counts": report.counts})
    if messages and central_topic_arn:
        try:
            _publish(messages, central_topic_arn, clients.sns(_region_of(central_topic_arn)))
        except ReportNotPublishedError as error:
            logger.error(
                "report not delivered to the organization's topic",
                extra={"topic_arn": central_topic_arn, "code": error.code, "operation": error.operation},
            )
            if local_failure is None:
                # The account's own topic (or its log) has every finding: only the central copy is missing.
                local_failure = ReportNotPublishedError(
                    error, published=list(report.findings), failed_parts=len(messages), parts=len(messages)
                )
        else:
            logger.info("report sent to the organization's topic", extra={"parts": len(messages)})
    if local_failure is not None:
        raise local_failure
    return message_ids


def _publish(messages: Sequence[OutgoingMessage], topic_arn: str, sns: SNSClient) -> list[str]:
    """Every part tried; a failed part logged in full. Raises ReportNotPublishedError when any failed."""
    message_ids = []
    published: list[Finding] = []
    failure: AwsError | None = None
    failed_parts = 0
    for message in messages:
        try:
            with translated("Publish"):
                response = sns.publish(
                    TopicArn=topic_arn,
                    Subject=message.subject,
                    Message=message.body,
                    MessageAttributes={
                        name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items()
                    },
                )
        except AwsError as error:
            failure = failure or error
            failed_parts += 1
            # The whole part, as the topic would have carried it: CloudWatch Logs keeps what SNS did not take.
            logger.error(
                "report part not published: written here in full",
                extra={"code": error.code, "subject": message.subject, "topic_arn": topic_arn, "report": message.body},
            )
            continue
        message_ids.append(response["MessageId"])
        published.extend(Report.model_validate(json.loads(message.body)).findings)
    if failure is not None:
        raise ReportNotPublishedError(failure, published=published, failed_parts=failed_parts, parts=len(messages))
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

"""SNS adapter: publish a report as one or more messages, with attributes subscription filters can use.

A report never goes nowhere: a part that cannot be published is written to the log in full (its JSON body, as it
would have reached the topic), the other parts are still tried, and then the publish raises, so Lambda's retry and
the dead-letter queue see the failure.
"""

from __future__ import annotations

import json

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated
from imds_enforcer.domain.report import Finding, Report, render_messages
from imds_enforcer.observability import logger


class ReportNotPublishedError(AwsError):
    """Some parts of a report were not published (each logged in full); `published` are the findings that were."""

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


def publish_report(report: Report, *, topic_arn: str) -> list[str]:
    """Publish every part of the report; returns the message ids. A report without findings publishes nothing.
    Raises ReportNotPublishedError after trying every part when any failed."""
    messages = render_messages(report)
    if messages and not topic_arn:
        # Never quiet: without a topic the report still reaches the logs in full.
        logger.warning(
            "REPORT_TOPIC_ARN is not set: report written to the log only", extra={"report": report.to_json()}
        )
        return []
    message_ids = []
    published: list[Finding] = []
    failure: AwsError | None = None
    failed_parts = 0
    for message in messages:
        try:
            with translated("Publish"):
                response = clients.sns().publish(
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
                extra={"code": error.code, "subject": message.subject, "report": message.body},
            )
            continue
        message_ids.append(response["MessageId"])
        published.extend(Report.model_validate(json.loads(message.body)).findings)
    if failure is not None:
        raise ReportNotPublishedError(failure, published=published, failed_parts=failed_parts, parts=len(messages))
    if messages:
        logger.info("report published", extra={"parts": len(messages), "counts": report.counts})
    return message_ids

"""SNS adapter: publish a report as one or more messages, with attributes subscription filters can use."""

from __future__ import annotations

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated
from imds_enforcer.domain.report import Report, render_messages
from imds_enforcer.observability import logger


def publish_report(report: Report, *, topic_arn: str) -> list[str]:
    """Publish every part of the report; returns the message ids. A report without findings publishes nothing."""
    messages = render_messages(report)
    if messages and not topic_arn:
        # Never quiet: without a topic the report still reaches the logs in full.
        logger.warning(
            "REPORT_TOPIC_ARN is not set: report written to the log only", extra={"report": report.to_json()}
        )
        return []
    message_ids = []
    for message in messages:
        with translated("Publish"):
            response = clients.sns().publish(
                TopicArn=topic_arn,
                Subject=message.subject,
                Message=message.body,
                MessageAttributes={
                    name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items()
                },
            )
        message_ids.append(response["MessageId"])
    if messages:
        logger.info("report published", extra={"parts": len(messages), "counts": report.counts})
    return message_ids

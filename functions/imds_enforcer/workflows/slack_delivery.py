"""Deliver reports to Slack: every valid report in an SNS event is posted once through slack_sdk's WebhookClient.

Delivery semantics: a record that is not a report is logged and skipped (retrying cannot fix it); a post that still
fails after the client's own retries is collected and raised after the other records were tried, so Lambda's
asynchronous retries and then the function's dead-letter queue keep the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imds_enforcer.aws import secrets
from imds_enforcer.aws.slack_webhook import SlackDeliveryError, post
from imds_enforcer.domain.settings import Settings, SettingsError
from imds_enforcer.domain.slack_message import render_alarm, render_payload, reports_from_sns_event
from imds_enforcer.observability import logger


@dataclass
class NotifyOutcome:
    posted: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"posted": self.posted, "skipped": self.skipped}

    def raise_for_failures(self) -> None:
        """Raise once every record was tried, so one failed post does not hold back the others."""
        if self.failures:
            raise SlackDeliveryError(f"{len(self.failures)} report(s) not posted to Slack: " + "; ".join(self.failures))


def notify_slack(event: dict[str, Any], *, settings: Settings) -> NotifyOutcome:
    """Post every report in an SNS-to-Lambda event to the Slack webhook named by SLACK_WEBHOOK_SECRET.

    Failed posts are collected in the outcome (the caller counts them, then `raise_for_failures()`); a missing
    setting or an unreadable secret raises at once, since no post could succeed.
    """
    secret_id = settings.SLACK_WEBHOOK_SECRET
    if not secret_id:
        # Without it the notifier can do nothing: fail loudly, so the reports wait in the dead-letter queue.
        raise SettingsError("SLACK_WEBHOOK_SECRET is not set: the Slack notifier needs the name or ARN of the secret")
    outcome = NotifyOutcome()
    for record in reports_from_sns_event(event):
        where: dict[str, object] = {"message_id": record.message_id}
        if record.alarm is not None:
            payload = render_alarm(record.alarm)
            where |= {"alarm": record.alarm.name, "state": record.alarm.state}
        elif record.report is not None:
            payload = render_payload(record.report)
            report = record.report
            where |= {"account": report.account, "region": report.region, "findings": len(report.findings)}
        else:
            logger.warning("SNS record skipped", extra={"message_id": record.message_id, "reason": record.skip_reason})
            outcome.skipped += 1
            continue
        try:
            # Read lazily: an event with nothing to post never needs the secret.
            post(secrets.webhook_url(secret_id), payload)
        except SlackDeliveryError as error:
            logger.error("not posted to Slack", extra={**where, "error": str(error)})
            outcome.failures.append(f"{record.message_id}: {error}")
            if error.stale_url:
                secrets.forget_webhook_url(secret_id)
            continue
        outcome.posted += 1
        logger.info("posted to Slack", extra=where)
    return outcome

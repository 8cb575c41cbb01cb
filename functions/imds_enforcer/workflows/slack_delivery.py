"""Deliver reports to Slack: every valid report in an SNS event is posted once through slack_sdk's WebhookClient.

Delivery semantics: a record that is not a report is logged and skipped (retrying cannot fix it); a post that still
fails after the client's own retries is collected and raised after the other records were tried, so Lambda's
asynchronous retries and then the function's dead-letter queue keep the report.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from imds_enforcer.aws import secrets
from imds_enforcer.domain.settings import Settings, SettingsError
from imds_enforcer.domain.slack_message import SlackPayload, render_alarm, render_payload, reports_from_sns_event
from imds_enforcer.observability import logger

HTTP_TIMEOUT_SECONDS = 10
RATE_LIMIT_RETRIES = 3
SERVER_ERROR_RETRIES = 2
CONNECTION_RETRIES = 2
# A longer wait than this is better spent by Lambda's own retry (minutes later) than by a sleeping function.
MAX_RETRY_AFTER_SECONDS = 20
SERVER_ERROR_BACKOFF: RetryIntervalCalculator = BackoffRetryIntervalCalculator(backoff_factor=0.5)
# Slack says these when the webhook itself is gone or revoked: the secret may have been rotated since we read it.
STALE_URL_STATUSES = frozenset({403, 404, 410})


class SlackDeliveryError(RuntimeError):
    """Slack did not accept a report after the retries. Never carries the webhook URL."""

    def __init__(self, message: str, *, stale_url: bool = False) -> None:
        super().__init__(message)
        self.stale_url = stale_url


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


# --- delivery to the webhook -----------------------------------------------------------------------------------


def post(url: str, payload: SlackPayload) -> None:
    """One post with slack_sdk's client and retries; raises SlackDeliveryError (without the URL) if Slack refuses."""
    client = WebhookClient(url=url, timeout=HTTP_TIMEOUT_SECONDS, logger=_sdk_logger(), retry_handlers=retry_handlers())
    try:
        response = client.send_dict(payload.as_dict())
    except Exception as error:
        # Whatever the HTTP stack raised (after the connection retries), its message may quote the URL: redact it,
        # and drop the chain so the traceback Lambda prints cannot carry it either.
        raise SlackDeliveryError(f"could not reach Slack: {_redact(f'{type(error).__name__}: {error}', url)}") from None
    if response.status_code != 200:
        body = _redact(str(response.body or "")[:200], url)
        raise SlackDeliveryError(
            f"Slack answered HTTP {response.status_code} {body!r}",
            stale_url=response.status_code in STALE_URL_STATUSES,
        )


def retry_handlers() -> list[RetryHandler]:
    """Connection errors, 429 (honouring Retry-After) and 5xx, each with a bounded number of retries."""
    return [
        ConnectionErrorRetryHandler(
            max_retry_count=CONNECTION_RETRIES,
            interval_calculator=SERVER_ERROR_BACKOFF,
            # slack_sdk's defaults plus a read timeout, which urllib raises bare (not wrapped in URLError).
            error_types=[URLError, ConnectionResetError, RemoteDisconnected, TimeoutError],
        ),
        CappedRateLimitRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
        AnyServerErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES, interval_calculator=SERVER_ERROR_BACKOFF),
    ]


class CappedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler (sleeps Retry-After plus jitter), declining waits longer than a Lambda should sleep."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        values = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), [])
        try:
            wait = int(values[0]) if values else 1
        except ValueError:
            return False
        return wait <= MAX_RETRY_AFTER_SECONDS


class AnyServerErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's server-error handler retries 500 and 503 only; an outage at Slack's edge also says 502 or 504."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code <= 599


class _RedactUrls(logging.Filter):
    """Blanks any URL in the SDK's own log lines: for a webhook client, every URL is the secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _URL.sub("<redacted url>", record.getMessage())
        record.args = None
        return True


_URL = re.compile(r"https?://\S+", re.IGNORECASE)


@functools.cache
def _sdk_logger() -> logging.Logger:
    # slack_sdk logs the request URL at INFO whenever its logger's own level is NOTSET or DEBUG (it tests
    # `logger.level <= DEBUG`, not the effective level). A dedicated WARNING logger never reaches those lines;
    # the filter covers the error lines it still writes.
    sdk_logger = logging.getLogger("imds_enforcer.slack_sdk")
    sdk_logger.setLevel(logging.WARNING)
    sdk_logger.addFilter(_RedactUrls())
    return sdk_logger


def _redact(text: str, url: str) -> str:
    return _URL.sub("<redacted url>", text.replace(url, "<redacted url>"))

"""The Slack incoming-webhook client: one post through slack_sdk's WebhookClient, with bounded retries.

The webhook URL is a credential (anyone holding it can post to the channel): it never reaches a log line or an
exception message from here, and the SDK's own log lines are redacted.
"""

from __future__ import annotations

import functools
import logging
import re
from http.client import RemoteDisconnected
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

from imds_enforcer.domain.slack_message import SlackPayload

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

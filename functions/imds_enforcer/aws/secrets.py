"""Secrets Manager adapter: the Slack incoming-webhook URL, read once per container.

The URL is a credential (anyone holding it can post to the channel), so it lives only in Secrets Manager and in
this module's cache: never in the environment, the template, a log line or an exception message.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients

# The local webhook emulator answers on plain HTTP; anything else must be HTTPS.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_cache: dict[str, str] = {}


class WebhookSecretError(RuntimeError):
    """The webhook secret cannot be read or does not hold a webhook URL. Never carries the secret's value."""


def webhook_url(secret_id: str) -> str:
    """The webhook URL held by the secret `secret_id` (name or ARN); Secrets Manager is asked once per container."""
    cached = _cache.get(secret_id)
    if cached is not None:
        return cached
    try:
        response = clients.secretsmanager().get_secret_value(SecretId=secret_id)
    except ClientError as error:
        # The error names the secret id and the code, never the value: safe to chain.
        code = error.response.get("Error", {}).get("Code", "Unknown")
        raise WebhookSecretError(
            f"cannot read the Slack webhook secret {secret_id!r} (SLACK_WEBHOOK_SECRET): {code}"
        ) from error
    url = parse_secret(response.get("SecretString"), secret_id=secret_id)
    _cache[secret_id] = url
    return url


def parse_secret(secret_string: str | None, *, secret_id: str) -> str:
    """Accept the bare URL or `{"url": "..."}`; the errors say what is wrong without repeating the value."""
    if not secret_string or not secret_string.strip():
        raise WebhookSecretError(f"the Slack webhook secret {secret_id!r} has no SecretString")
    text = secret_string.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            raise WebhookSecretError(f"the Slack webhook secret {secret_id!r} is not valid JSON") from None
        url = document.get("url") if isinstance(document, dict) else None
        if not isinstance(url, str):
            raise WebhookSecretError(f"the Slack webhook secret {secret_id!r} is JSON without a string 'url' key")
        text = url.strip()
    if not _is_webhook_url(text):
        raise WebhookSecretError(
            f'the Slack webhook secret {secret_id!r} does not hold an https webhook URL (a bare URL or {{"url": ...}})'
        )
    return text


def _is_webhook_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # a malformed host: its message would not help, and the value must not leak
        return False
    if host is None or parts.path in ("", "/"):
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK_HOSTS)


def forget_webhook_url(secret_id: str) -> None:
    """Drop one cached URL, so the next call reads the secret again (after Slack said the URL is gone)."""
    _cache.pop(secret_id, None)


def reset_webhook_urls() -> None:
    """Forget every cached URL (tests; a fresh container)."""
    _cache.clear()

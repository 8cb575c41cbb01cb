"""The Slack notifier end to end: the real handler, the secret in (moto) Secrets Manager, slack_sdk's real HTTP
client and retries, and a real local HTTP server standing in for Slack (emulator/webhook.py)."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from slack_sdk.http_retry import builtin_handlers as slack_retry_handlers
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from emulator import ACCOUNT, REGION
from emulator.webhook import WebhookReceiver, start_webhook
from imds_enforcer.aws import clients, secrets, slack_webhook
from imds_enforcer.aws.secrets import WebhookSecretError
from imds_enforcer.aws.slack_webhook import SlackDeliveryError
from imds_enforcer.domain.report import Action, Finding, OutgoingMessage, Report, render_messages
from imds_enforcer.domain.settings import SettingsError
from imds_enforcer.domain.slack_message import render_payload
from imds_enforcer.handlers.slack_notify import handler
from imds_enforcer.observability import logger
from tests.support.context import FakeLambdaContext

pytestmark = pytest.mark.usefixtures("aws")

SECRET_NAME = "imds-enforcer/slack-webhook"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:imds-enforcer-reports"


@pytest.fixture(autouse=True)
def fresh_secret_cache() -> Iterator[None]:
    """Each test is a new container as far as the cached webhook URL goes."""
    secrets.reset_webhook_urls()
    yield
    secrets.reset_webhook_urls()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real 5xx retries, with a 10 ms pause instead of the production back-off."""
    monkeypatch.setattr(slack_webhook, "SERVER_ERROR_BACKOFF", FixedValueRetryIntervalCalculator(0.01))


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with start_webhook() as receiver:
        yield receiver


@pytest.fixture
def slack(webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> WebhookReceiver:
    """The webhook URL stored as a bare string, and SLACK_WEBHOOK_SECRET naming the secret."""
    store_secret(webhook.url)
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", SECRET_NAME)
    return webhook


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The standard logging tree at INFO (a Lambda's usual level), and slack_sdk's own loggers at DEBUG.

    botocore at DEBUG prints whole responses, GetSecretValue's included: that is botocore's wire log, never
    enabled in the function, so it is left out here rather than hidden from the product's own lines.
    """
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="slack_sdk")
    caplog.set_level(logging.DEBUG, logger="imds_enforcer")
    return caplog


class _CurrentStdout:
    """Writes to whatever sys.stdout is at the time of writing (capsys swaps it in per test phase)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def lambda_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> pytest.CaptureFixture[str]:
    """What the function writes to its log stream (Powertools' JSON lines, EMF). The logger's handler holds the
    stdout of import time, so send it to this test's captured stdout instead."""
    monkeypatch.setattr(logger.registered_handler, "stream", _CurrentStdout())
    return capsys


def log_lines(output: str, message: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if f'"message":"{message}"' in line]


def store_secret(value: str, name: str = SECRET_NAME) -> str:
    arn: str = boto3.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]
    return arn


def report(*findings: Finding, trigger: str = "gate") -> Report:
    return Report(account=ACCOUNT, region=REGION, trigger=trigger, mode="fix", findings=list(findings))


def sample_report() -> Report:
    return report(
        Finding(
            resource_id="i-0aaa", action=Action.REJECTED, reason="IMDSv1 calls rejected", metadata_no_token_rejected=7
        ),
        Finding(resource_id="i-0bbb", action=Action.BLOCKED, reason="IMDSv1 in use", metadata_no_token=12),
        Finding(resource_id="i-0ccc", action=Action.ENFORCED, reason="no IMDSv1 call in 14 days"),
    )


def sns_record(message: OutgoingMessage | str, *, subject: str | None = None) -> dict[str, Any]:
    """One record as SNS delivers it to Lambda (the shape in the AWS Lambda developer guide)."""
    body = message if isinstance(message, str) else message.body
    attributes = {} if isinstance(message, str) else message.attributes
    message_id = str(uuid.uuid4())
    return {
        "EventVersion": "1.0",
        "EventSubscriptionArn": f"{TOPIC_ARN}:{uuid.uuid4()}",
        "EventSource": "aws:sns",
        "Sns": {
            "SignatureVersion": "1",
            "Timestamp": "2026-11-20T12:00:05.000Z",
            "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
            "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
            "MessageId": message_id,
            "Message": body,
            "MessageAttributes": {name: {"Type": "String", "Value": value} for name, value in attributes.items()},
            "Type": "Notification",
            "UnsubscribeUrl": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC_ARN}",
            "TopicArn": TOPIC_ARN,
            "Subject": subject if subject is not None else ("" if isinstance(message, str) else message.subject),
        },
    }


def sns_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def published(rep: Report) -> list[OutgoingMessage]:
    """The messages exactly as the service publishes them to the report topic."""
    return render_messages(rep)


def assert_secret_absent(url: str, *texts: str) -> None:
    token = url.rsplit("/", 1)[-1]
    for text in texts:
        assert url not in text
        assert token not in text


# --- success -------------------------------------------------------------------------------------------------


def test_a_report_is_posted_once_with_its_blocks(
    slack: WebhookReceiver,
    lambda_context: FakeLambdaContext,
    logs: pytest.LogCaptureFixture,
    lambda_output: pytest.CaptureFixture[str],
) -> None:
    # Given a report published the way the service publishes it
    message = published(sample_report())[0]

    # When SNS delivers it to the notifier
    result = handler(sns_event(sns_record(message)), lambda_context)

    # Then Slack received exactly one post: the Block Kit rendering of that same report
    assert result == {"posted": 1, "skipped": 0}
    assert [attempt.status for attempt in slack.attempts] == [200]
    (post,) = slack.received()
    expected = render_payload(Report.model_validate_json(message.body))
    assert post["blocks"] == expected.blocks
    assert post["text"] == message.subject
    assert (
        post["blocks"][0]["text"]["text"] == "Action needed: IMDSv2 gate report · 123456789012 · us-east-1 · fix mode"
    )
    first = post["blocks"][3]["text"]["text"]
    assert "*rejected*" in first
    assert "instanceId=i-0aaa" in first
    assert "(MetadataNoTokenRejected): *7*" in first
    # And the URL appears in no log line, at any level
    out, err = lambda_output.readouterr()
    assert log_lines(out, "posted to Slack")[0]["findings"] == 3
    assert_secret_absent(slack.url, out, err, logs.text)


def test_the_secret_may_hold_json_with_a_url_key(
    webhook: WebhookReceiver, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the secret as {"url": ...}, named by its ARN
    arn = store_secret(json.dumps({"url": webhook.url}))
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", arn)

    handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    assert len(webhook.received()) == 1


def test_the_secret_is_read_once_per_container(slack: WebhookReceiver, lambda_context: FakeLambdaContext) -> None:
    # Given a count of GetSecretValue calls
    reads: list[str] = []
    clients.secretsmanager().meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **_: reads.append("read")
    )
    message = published(sample_report())[0]

    # When two invocations run in the same container
    handler(sns_event(sns_record(message)), lambda_context)
    handler(sns_event(sns_record(message)), lambda_context)

    # Then the secret was read once, and both reports were posted
    assert reads == ["read"]
    assert len(slack.received()) == 2


def test_each_part_of_a_split_report_is_its_own_post(slack: WebhookReceiver, lambda_context: FakeLambdaContext) -> None:
    # Given a run big enough to be published in several parts
    findings = [Finding(resource_id=f"i-{n:017x}", action=Action.BLOCKED, reason="x" * 200) for n in range(60)]
    parts = render_messages(report(*findings), max_bytes=8 * 1024)
    assert len(parts) >= 3

    # When SNS delivers each part (one message per invocation)
    for part in parts:
        handler(sns_event(sns_record(part)), lambda_context)

    # Then each part is one post, naming its place and carrying the whole run's counts
    posts = slack.received()
    assert len(posts) == len(parts)
    for index, post in enumerate(posts, start=1):
        assert f"(part {index}/{len(parts)})" in post["blocks"][0]["text"]["text"]
        assert "*Whole run:* 60 blocked" in post["blocks"][1]["text"]["text"]


# --- retries and failures ------------------------------------------------------------------------------------


def test_rate_limiting_is_retried_after_retry_after(
    slack: WebhookReceiver,
    lambda_context: FakeLambdaContext,
    logs: pytest.LogCaptureFixture,
    lambda_output: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Slack throttles the first post (429, Retry-After: 0), and the client's waits recorded (not slept)
    slack.rate_limit(1, retry_after=0)
    waits: list[float] = []
    monkeypatch.setattr(slack_retry_handlers.time, "sleep", waits.append)

    # When a report arrives
    result = handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    # Then the client waited as Slack asked (Retry-After plus slack_sdk's jitter under a second), retried, and Slack
    # holds exactly one message
    assert result == {"posted": 1, "skipped": 0}
    assert [attempt.status for attempt in slack.attempts] == [429, 200]
    (wait,) = waits
    assert 0 <= wait < 1
    assert len(slack.received()) == 1
    # And the retry path, where slack_sdk would name the URL in its own log lines, leaks nothing
    out, err = lambda_output.readouterr()
    assert_secret_absent(slack.url, out, err, logs.text)


def test_a_retry_after_longer_than_a_lambda_should_sleep_is_left_to_lambdas_retry(
    slack: WebhookReceiver, lambda_context: FakeLambdaContext
) -> None:
    slack.rate_limit(1, retry_after=slack_webhook.MAX_RETRY_AFTER_SECONDS + 1)

    with pytest.raises(SlackDeliveryError, match="HTTP 429"):
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    assert [attempt.status for attempt in slack.attempts] == [429]


@pytest.mark.usefixtures("fast_backoff")
def test_a_server_error_that_persists_raises_for_lambdas_retry_without_the_url(
    slack: WebhookReceiver,
    lambda_context: FakeLambdaContext,
    logs: pytest.LogCaptureFixture,
    lambda_output: pytest.CaptureFixture[str],
) -> None:
    # Given Slack answers 500 to everything
    slack.fail_forever(500)

    # When a report arrives
    with pytest.raises(SlackDeliveryError) as raised:
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    # Then the post was retried, then the handler raised (so Lambda retries and the DLQ keeps the report)
    assert [attempt.status for attempt in slack.attempts] == [500] * (1 + slack_webhook.SERVER_ERROR_RETRIES)
    assert slack.received() == []
    assert "HTTP 500" in str(raised.value)
    # And neither the exception nor any log line carries the URL
    out, err = lambda_output.readouterr()
    assert log_lines(out, "not posted to Slack")[0]["error"] == "Slack answered HTTP 500 'internal_error'"
    assert_secret_absent(slack.url, str(raised.value), repr(raised.value), out, err, logs.text)
    assert raised.value.__cause__ is None
    # And the failure is counted for an alarm
    (emf,) = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    assert emf["SlackPostsFailed"] == [1.0]


@pytest.mark.usefixtures("fast_backoff")
def test_502_from_slacks_edge_is_retried_too(slack: WebhookReceiver, lambda_context: FakeLambdaContext) -> None:
    slack.fail_forever(502)

    with pytest.raises(SlackDeliveryError, match="HTTP 502"):
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    assert len(slack.attempts) == 1 + slack_webhook.SERVER_ERROR_RETRIES


def test_an_unreachable_webhook_raises_without_the_url(
    lambda_context: FakeLambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    fast_backoff: None,
    logs: pytest.LogCaptureFixture,
    lambda_output: pytest.CaptureFixture[str],
) -> None:
    # Given a webhook URL on which nothing listens any more
    with start_webhook() as gone:
        url = gone.url
    store_secret(url)
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", SECRET_NAME)

    with pytest.raises(SlackDeliveryError, match="could not reach Slack") as raised:
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    out, err = lambda_output.readouterr()
    assert_secret_absent(url, str(raised.value), out, err, logs.text)


def test_a_revoked_webhook_raises_and_the_next_invocation_rereads_the_rotated_secret(
    slack: WebhookReceiver, lambda_context: FakeLambdaContext
) -> None:
    # Given the cached URL stopped working (Slack: 404 no_service) and the secret was rotated to a working one
    message = published(sample_report())[0]
    handler(sns_event(sns_record(message)), lambda_context)
    with start_webhook() as rotated:
        boto3.client("secretsmanager").put_secret_value(SecretId=SECRET_NAME, SecretString=rotated.url)
        slack.path = "/services/revoked"

        # When the next report fails, and Lambda retries it
        with pytest.raises(SlackDeliveryError, match="HTTP 404"):
            handler(sns_event(sns_record(message)), lambda_context)
        handler(sns_event(sns_record(message)), lambda_context)

        # Then the retry read the secret again and reached the new webhook
        assert len(rotated.received()) == 1
    assert len(slack.received()) == 1


# --- bad input -----------------------------------------------------------------------------------------------


def test_a_malformed_record_is_skipped_and_the_valid_one_is_still_posted(
    slack: WebhookReceiver, lambda_context: FakeLambdaContext, lambda_output: pytest.CaptureFixture[str]
) -> None:
    # Given an event with a record that is not a report, and one that is
    event = sns_event(
        sns_record("{not json", subject="hand-written"),
        sns_record(published(sample_report())[0]),
    )

    # When it is delivered
    result = handler(event, lambda_context)

    # Then the bad record is logged with its reason and skipped, and the good one is posted
    assert result == {"posted": 1, "skipped": 1}
    assert len(slack.received()) == 1
    out, _ = lambda_output.readouterr()
    skipped = log_lines(out, "SNS record skipped")
    assert len(skipped) == 1
    assert skipped[0]["message_id"] == event["Records"][0]["Sns"]["MessageId"]
    assert "not an imds-enforcer report" in skipped[0]["reason"]


def test_a_report_of_another_schema_is_skipped_not_retried(
    slack: WebhookReceiver, lambda_context: FakeLambdaContext
) -> None:
    foreign = json.dumps({"schema": "someone-else/v9", "account": ACCOUNT, "region": REGION, "findings": []})

    result = handler(sns_event(sns_record(foreign)), lambda_context)

    assert result == {"posted": 0, "skipped": 1}
    assert slack.attempts == []


def test_without_slack_webhook_secret_the_notifier_fails_naming_the_variable(
    webhook: WebhookReceiver, lambda_context: FakeLambdaContext
) -> None:
    with pytest.raises(SettingsError, match="SLACK_WEBHOOK_SECRET"):
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    assert webhook.attempts == []


def test_a_missing_secret_is_a_clear_error_naming_it(
    lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", "no-such-secret")

    with pytest.raises(WebhookSecretError, match=r"'no-such-secret'.*ResourceNotFoundException"):
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)


@pytest.mark.parametrize(
    "value",
    [
        "hooks.slack.com/services/T000/B000/NOTAURL",
        "http://hooks.slack.com/services/T000/B000/PLAINHTTP",
        '{"webhook": "https://hooks.slack.com/services/T000/B000/WRONGKEY"}',
        '{"url": "https://hooks.slack.com/services/T000/B000/BROKENJSON"',
    ],
)
def test_a_secret_that_holds_no_usable_url_is_refused_without_echoing_it(
    value: str, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_secret(value)
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", SECRET_NAME)

    with pytest.raises(WebhookSecretError) as raised:
        handler(sns_event(sns_record(published(sample_report())[0])), lambda_context)

    assert SECRET_NAME in str(raised.value)
    assert "hooks.slack.com" not in str(raised.value)
    assert value.rsplit("/", 1)[-1].strip('"}') not in str(raised.value)


# --- CloudWatch alarms share the topic -------------------------------------------------------------------------


def test_a_cloudwatch_alarm_on_the_topic_is_posted_too(
    slack: WebhookReceiver, lambda_context: FakeLambdaContext
) -> None:
    # Given the stack's Rejected alarm firing (CloudWatch's own JSON, no message attributes)
    alarm = {
        "AlarmName": "ImdsEnforcer-us-east-1-RejectedAlarm",
        "AlarmDescription": "HIGH: an instance this service switched to IMDSv2 is rejecting IMDSv1 calls",
        "AWSAccountId": "123456789012",
        "NewStateValue": "ALARM",
        "NewStateReason": "Threshold Crossed: 1 datapoint [3.0] was greater than the threshold (0.0).",
        "StateChangeTime": "2026-11-20T12:00:00.000+0000",
        "Region": "US East (N. Virginia)",
        "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:ImdsEnforcer-us-east-1-RejectedAlarm",
        "OldStateValue": "OK",
        "Trigger": {"MetricName": "Rejected", "Namespace": "ImdsEnforcer", "Threshold": 0.0},
    }
    record = sns_record(json.dumps(alarm), subject='ALARM: "ImdsEnforcer-us-east-1-RejectedAlarm" in US East')

    # When SNS delivers it to the notifier
    result = handler(sns_event(record), lambda_context)

    # Then it is posted, loud and linked, rather than skipped as "not a report"
    assert result == {"posted": 1, "skipped": 0}
    (post,) = slack.received()
    assert post["blocks"][0]["text"]["text"] == "Action needed: ALARM: ImdsEnforcer-us-east-1-RejectedAlarm"
    body = post["blocks"][1]["text"]["text"]
    assert "is rejecting IMDSv1 calls" in body
    assert "Threshold Crossed" in body
    assert "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#alarmsV2:alarm/" in body

"""The Slack notifier: posts every message on the report topic to a Slack incoming webhook."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.permissions import slack_notifier_permissions

HANDLER = "imds_enforcer.handlers.slack_notify.handler"


def webhook_secret_arn(scope: Construct, secret: str) -> str:
    """The ARN IAM needs for a secret given by name or ARN.

    Secrets Manager appends 6 random characters to a secret's ARN, so a name becomes ``...:secret:<name>-??????``
    (``?`` matches exactly one character: not ``<name>-suffix-xxxxxx``, another secret). An ARN is used as given.
    """
    if secret.startswith("arn:"):
        return secret
    return cdk.Stack.of(scope).format_arn(
        service="secretsmanager",
        resource="secret",
        resource_name=f"{secret}-??????",
        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
    )


def _secret_region(scope: Construct, secret: str) -> str:
    return secret.split(":")[3] if secret.startswith("arn:") else cdk.Stack.of(scope).region


class SlackNotifier(Construct):
    """The notifier Lambda, subscribed to the report topic; undeliverable messages land in its dead-letter queue."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        topic: sns.ITopic,
        webhook_secret: str,
        webhook_secret_kms_key_arn: str,
        wiring: FunctionWiring,
    ) -> None:
        super().__init__(scope, construct_id)
        secret_arn = webhook_secret_arn(self, webhook_secret)
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            name="slack-notifier",
            wiring=wiring,
            handler=HANDLER,
            description="IMDSv2 Enforcer Slack notifier: posts each report to the Slack incoming webhook",
            permissions=slack_notifier_permissions(
                secret_arn=secret_arn,
                kms_key_arn=webhook_secret_kms_key_arn,
                secret_region=_secret_region(self, webhook_secret),
            ),
            memory_size=256,
            # Up to 3 posts x 10 s HTTP timeout, back-off, and a Retry-After of up to 20 s (aws/slack_webhook.py).
            timeout=cdk.Duration.seconds(90),
            # Reports arrive a few per run; Slack's webhook rate limit (1/s) is the real cap, handled by the client.
            reserved_concurrency=None,
        )

        # SNS retries a failed delivery to Lambda, then parks the message in the same queue as failed invocations
        # (CDK adds the queue policy statement letting this topic, and only it, send there).
        self.subscription = topic.add_subscription(
            subscriptions.LambdaSubscription(self.enforcer.function, dead_letter_queue=self.enforcer.dead_letter_queue)
        )

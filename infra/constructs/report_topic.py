"""The report topic: every finding the service publishes goes here, encrypted with its own key, TLS only."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class ReportTopic(Construct):
    """KMS-encrypted SNS topic that denies publishing over plain HTTP, with optional e-mail subscriptions."""

    def __init__(self, scope: Construct, construct_id: str, *, notification_emails: Sequence[str]) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts the IMDSv2 Enforcer report topic",
            enable_key_rotation=True,
            # Only in-flight SNS messages are encrypted with it; nothing outlives the stack.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # enforce_ssl adds the Deny of sns:Publish when aws:SecureTransport is false.
        self.topic = sns.Topic(
            self, "Topic", display_name="IMDSv2 Enforcer reports", master_key=self.key, enforce_ssl=True
        )
        for address in notification_emails:
            # The subscription's construct id is derived from the address, so each address appears once.
            self.topic.add_subscription(subscriptions.EmailSubscription(address))

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        """Publish rights, written out exactly: ``Topic.grant_publish`` would add ``kms:GenerateDataKey*``."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["sns:Publish"], resources=[self.topic.topic_arn])
        )
        # A publisher to an encrypted topic needs a data key, and Decrypt to use it.
        self.key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt")

"""The report topic: every finding the service publishes goes here, encrypted with its own key, TLS only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from imds_enforcer.domain.report import SEVERITY_RANK, Severity

# A CloudWatch alarm notification (JSON) always has this key; a report never does.
ALARM_MESSAGE_KEY = "AlarmName"


def email_filter_policy(min_severity: Severity) -> dict[str, Any] | None:
    """The e-mail subscriptions' filter, on the message body; ``None`` (everything) for ``info``.

    On the body, not on the ``severity`` message attribute: CloudWatch alarms publish without attributes, and an
    attribute filter (even ``exists: false``) drops such messages. A report passes when any of its findings is at
    least ``min_severity`` (so does its ``severity`` attribute, the most severe finding's); alarms always pass.
    """
    if min_severity is Severity.INFO:
        return None
    wanted = [s.value for s in Severity if SEVERITY_RANK[s] >= SEVERITY_RANK[min_severity]]
    return {"$or": [{"findings": {"severity": wanted}}, {ALARM_MESSAGE_KEY: [{"exists": True}]}]}


class ReportTopic(Construct):
    """KMS-encrypted SNS topic that denies publishing over plain HTTP, with optional e-mail subscriptions.

    The organization's central topic (in the security account) is the same topic with a fixed name, its key under a
    fixed alias (so member accounts can name both without a cross-account reference), and ``organization_id``:
    any principal of that organization may then publish to it and use the key for it, and no one else.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        notification_emails: Sequence[str],
        email_min_severity: Severity = Severity.INFO,
        topic_name: str | None = None,
        key_alias: str | None = None,
        organization_id: str = "",
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts the IMDSv2 Enforcer report topic",
            enable_key_rotation=True,
            # Only in-flight SNS messages are encrypted with it; nothing outlives the stack.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        if key_alias is not None:
            self.key.add_alias(key_alias)
        # enforce_ssl adds the Deny of sns:Publish when aws:SecureTransport is false.
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name="IMDSv2 Enforcer reports",
            topic_name=topic_name,
            master_key=self.key,
            enforce_ssl=True,
        )
        if organization_id:
            self._admit_organization(organization_id)
        filter_policy = email_filter_policy(email_min_severity)
        for address in notification_emails:
            # The subscription's construct id is derived from the address, so each address appears once.
            subscription = self.topic.add_subscription(subscriptions.EmailSubscription(address))
            if filter_policy is not None:
                # Set on the L1 resource: CDK's typed filter API has no "$or" across keys.
                resource = cast(sns.CfnSubscription, subscription.node.default_child)
                resource.filter_policy = filter_policy
                resource.filter_policy_scope = "MessageBody"

    def _admit_organization(self, organization_id: str) -> None:
        """Every principal of the organization may publish (the member accounts' enforcers, whatever their role
        names), over TLS (enforce_ssl's Deny still applies). A publisher to an encrypted topic needs a data key and
        Decrypt on the topic's key; across accounts the key policy must allow it, and only through SNS here."""
        in_organization = {"aws:PrincipalOrgID": organization_id}
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OrganizationPublish",
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": in_organization},
            )
        )
        region = cdk.Stack.of(self).region
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OrganizationPublishersUseKey",
                principals=[iam.AnyPrincipal()],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={
                    "StringEquals": {**in_organization, "kms:ViaService": f"sns.{region}.{cdk.Aws.URL_SUFFIX}"}
                },
            )
        )

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        """Publish rights, written out exactly: ``Topic.grant_publish`` would add ``kms:GenerateDataKey*``."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["sns:Publish"], resources=[self.topic.topic_arn])
        )
        # A publisher to an encrypted topic needs a data key, and Decrypt to use it.
        self.key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt")

    def allow_alarms(self, alarms: Sequence[cloudwatch.IAlarm]) -> None:
        """Let CloudWatch publish these alarms' notifications here (and only these: confused-deputy protection).

        Needed because the topic has a resource policy and a customer managed key; CloudWatch's documented key
        grant is Decrypt and GenerateDataKey*, spelled out here as the one action SNS uses.
        """
        if not alarms:
            return
        stack = cdk.Stack.of(self)
        cloudwatch_principal = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[cloudwatch_principal],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "ArnEquals": {"aws:SourceArn": [alarm.alarm_arn for alarm in alarms]},
                    "StringEquals": {"aws:SourceAccount": stack.account},
                },
            )
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsUseKey",
                principals=[cloudwatch_principal],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
                # Confused-deputy protection: only for alarms of this account and region. By pattern, not by the
                # alarms' own ARNs: those would make the key depend on the alarms, which depend on the topic, which
                # depends on the key. (The topic's policy above names the alarms exactly.)
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )

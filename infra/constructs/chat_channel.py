"""The chat channel: AWS Chatbot (Amazon Q Developer in chat applications) posts the report topic to one Slack channel.

Notifications only. Chatbot also runs AWS commands typed in the channel, with the channel role (or, when the
configuration requires user roles, a member's own role), capped by the guardrail policies. Here the role has no
permissions and the guardrail is ``AWSDenyAll``, so nothing typed in the channel can act on the account.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

CHATBOT_PRINCIPAL = "chatbot.amazonaws.com"
# An AWS managed policy whose one statement denies every action: as a guardrail, it caps every command at nothing.
DENY_ALL_POLICY = "AWSDenyAll"
# What AWS::Chatbot::SlackChannelConfiguration accepts as ConfigurationName.
_CONFIGURATION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def configuration_name(region: str) -> str:
    """One name per regional stack: Chatbot configurations are global, so names are unique in the account."""
    name = f"imds-enforcer-{region}"
    if not _CONFIGURATION_NAME.match(name):
        raise ValueError(f"{name!r} is not a Chatbot configuration name")
    return name


class ChatChannel(Construct):
    """A Slack channel configuration subscribed to ``topic``, with a role that can do nothing."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        topic: sns.ITopic,
        topic_key: kms.IKey,
        slack_workspace_id: str,
        slack_channel_id: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)

        # Our own role rather than the construct's default, to say what it is for; it gets no policy at all.
        # Posting an SNS message needs none (Chatbot receives it from SNS), and commands typed in the channel must
        # find nothing to use. Deliberately not under the service's IAM path: roles there are exempt from the
        # IMDSv2 guardrails and are taken for the enforcer's own calls by the launch watch.
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(CHATBOT_PRINCIPAL),
            description="IMDSv2 Enforcer Slack channel (AWS Chatbot): notifications only, so no permissions",
        )
        self.configuration = chatbot.SlackChannelConfiguration(
            self,
            "Configuration",
            slack_channel_configuration_name=configuration_name(stack.region),
            slack_workspace_id=slack_workspace_id,
            slack_channel_id=slack_channel_id,
            notification_topics=[topic],
            role=self.role,
            # Without this CDK leaves the guardrail unset and Chatbot applies AdministratorAccess as the cap.
            guardrail_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(DENY_ALL_POLICY)],
            # A member's own role would bring that member's permissions into the channel; none are wanted here.
            user_role_required=False,
            # Delivery failures (e.g. the app removed from the channel) are worth a log line; every message is not.
            logging_level=chatbot.LoggingLevel.ERROR,
        )

        # The topic is encrypted with a customer managed key, which (unlike an AWS managed one) can be shared with
        # the Chatbot service: its key policy lets Chatbot decrypt what it receives, with exactly the two actions
        # AWS names for encrypted topics. Added here, so the key names Chatbot only when a channel is configured.
        topic_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ChatbotUseKey",
                principals=[iam.ServicePrincipal(CHATBOT_PRINCIPAL)],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
                # Only for this stack's channel configuration, in this account. Its ARN is built from its fixed name:
                # a reference would make the key depend on the configuration, which depends on the topic and so on
                # the key.
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="chatbot",
                            region="",
                            resource="chat-configuration",
                            resource_name=f"slack-channel/{configuration_name(stack.region)}",
                        )
                    },
                },
            )
        )

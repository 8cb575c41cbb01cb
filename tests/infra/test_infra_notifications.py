"""Who hears what: the Slack notifier (a secret's name, never the URL), the AWS Chatbot Slack channel (notifications
only), e-mail filtering, alarms on the topic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from imds_enforcer.domain.report import Severity
from infra.constructs.report_topic import email_filter_policy
from tests.infra.conftest import (
    ACCOUNT,
    CONTEXT,
    REGIONS,
    SLACK_CHANNEL_ID,
    SLACK_SECRET_KEY_ARN,
    SLACK_SECRET_NAME,
    SLACK_WORKSPACE_ID,
)
from tests.infra.template_helpers import as_list, render

SLACK_HANDLER = "imds_enforcer.handlers.slack_notify.handler"


def _only(template: Template, resource_type: str, props: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    found = template.find_resources(resource_type, {"Properties": props} if props else None)
    ((logical_id, resource),) = found.items()
    return logical_id, dict(resource)


def _slack_function(template: Template) -> tuple[str, dict[str, Any]]:
    return _only(template, "AWS::Lambda::Function", {"Handler": SLACK_HANDLER})


def _slack_statements(template: Template) -> list[dict[str, Any]]:
    role_id = _slack_function(template)[1]["Properties"]["Role"]["Fn::GetAtt"][0]
    policies = template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role_id}]}})
    return [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]


# ---- Slack notifier ------------------------------------------------------------------------------------------


def test_slack_notifier_runs_the_slack_handler_small_and_short(template: Template) -> None:
    _, function = _slack_function(template)

    props = function["Properties"]
    assert (props["Runtime"], props["Architectures"], props["MemorySize"], props["Timeout"]) == (
        "python3.14",
        ["arm64"],
        256,
        90,
    )


def test_slack_notifier_gets_the_secrets_name_and_never_the_webhook(synthesized: Any, template: Template) -> None:
    env = _slack_function(template)[1]["Properties"]["Environment"]["Variables"]

    assert env["SLACK_WEBHOOK_SECRET"] == SLACK_SECRET_NAME
    # It reads the secret, it does not report: no topic to publish to.
    assert "REPORT_TOPIC_ARN" not in env
    for name in synthesized.templates:
        assert "hooks.slack.com" not in json.dumps(synthesized.templates[name])


@pytest.mark.parametrize("region", REGIONS)
def test_slack_notifier_may_read_only_that_secret_and_decrypt_only_through_secrets_manager(
    synthesized: Any, region: str
) -> None:
    statements = _slack_statements(synthesized.template(region))

    (read,) = [s for s in statements if "secretsmanager:GetSecretValue" in as_list(s["Action"])]
    assert as_list(read["Action"]) == ["secretsmanager:GetSecretValue"]
    assert render(read["Resource"]) == (
        f"arn:${{AWS::Partition}}:secretsmanager:{region}:{ACCOUNT}:secret:{SLACK_SECRET_NAME}-??????"
    )
    (decrypt,) = [s for s in statements if "kms:Decrypt" in as_list(s["Action"])]
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Resource"] == SLACK_SECRET_KEY_ARN
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}}


def test_slack_notifier_may_not_publish_reports(template: Template) -> None:
    actions = {a for s in _slack_statements(template) for a in as_list(s["Action"])}

    assert "sns:Publish" not in actions
    assert not {a for a in actions if a.startswith("kms:")} - {"kms:Decrypt"}
    assert not {a for a in actions if a.startswith("ec2:") or a.startswith("cloudwatch:")}


def test_slack_notifier_is_subscribed_with_its_dead_letter_queue_open_to_this_topic_only(template: Template) -> None:
    function_id, _ = _slack_function(template)
    topic_id, _ = _only(template, "AWS::SNS::Topic")
    subscription_id, subscription = _only(template, "AWS::SNS::Subscription", {"Protocol": "lambda"})
    props = subscription["Properties"]

    assert props["Endpoint"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert props["TopicArn"] == {"Ref": topic_id}
    queue_id = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    # The same queue as the function's failed async invocations.
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "FunctionName": {"Ref": function_id},
            "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue_id, "Arn"]}}},
        },
    )
    template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sns.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
                            "Condition": {"ArnEquals": {"aws:SourceArn": {"Ref": topic_id}}},
                        }
                    ]
                )
            },
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::Permission",
        {"Action": "lambda:InvokeFunction", "Principal": "sns.amazonaws.com", "SourceArn": {"Ref": topic_id}},
    )
    assert subscription_id


def test_without_a_webhook_secret_no_slack_notifier_is_built() -> None:
    from app import build_app

    # Given the same context without the secret (and its key), when the app is built (no synth: the tree suffices)...
    context = {k: v for k, v in CONTEXT.items() if not k.startswith("slack_webhook_secret")}
    app = build_app(context=context)

    # ...then no stack holds a Slack notifier, and its outputs are absent.
    paths = [construct.node.path for construct in app.node.find_all()]
    assert any(path.endswith("/UsageGate") for path in paths)
    assert not [path for path in paths if "SlackNotifier" in path]


# ---- AWS Chatbot Slack channel -------------------------------------------------------------------------------


def _chat_role(template: Template) -> tuple[str, dict[str, Any]]:
    trust = Match.object_like({"Statement": [Match.object_like({"Principal": {"Service": "chatbot.amazonaws.com"}})]})
    return _only(template, "AWS::IAM::Role", {"AssumeRolePolicyDocument": trust})


@pytest.mark.parametrize("region", REGIONS)
def test_chat_channel_posts_the_report_topic_to_the_configured_slack_channel(synthesized: Any, region: str) -> None:
    template = synthesized.template(region)
    topic_id, _ = _only(template, "AWS::SNS::Topic")
    role_id, _ = _chat_role(template)

    _, configuration = _only(template, "AWS::Chatbot::SlackChannelConfiguration")
    props = configuration["Properties"]

    assert props["SlackWorkspaceId"] == SLACK_WORKSPACE_ID
    assert props["SlackChannelId"] == SLACK_CHANNEL_ID
    assert props["SnsTopicArns"] == [{"Ref": topic_id}]
    assert props["IamRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert props["LoggingLevel"] == "ERROR"
    assert props["UserRoleRequired"] is False
    # Chatbot configurations are account-wide, not regional: each regional stack needs its own name.
    assert props["ConfigurationName"] == f"imds-enforcer-{region}"


def test_chat_channel_commands_are_capped_at_nothing_by_the_deny_all_guardrail(template: Template) -> None:
    _, configuration = _only(template, "AWS::Chatbot::SlackChannelConfiguration")

    # Unset, Chatbot would cap commands at AdministratorAccess; AWSDenyAll caps them at nothing.
    (guardrail,) = configuration["Properties"]["GuardrailPolicies"]
    assert render(guardrail) == "arn:${AWS::Partition}:iam::aws:policy/AWSDenyAll"


def test_chat_channel_role_is_assumable_by_chatbot_only_and_has_no_permissions(template: Template) -> None:
    role_id, role = _chat_role(template)
    props = role["Properties"]

    assert props["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "chatbot.amazonaws.com"}}
    ]
    # No inline, managed or attached policy: posting needs none, and commands must find nothing to use.
    assert "Policies" not in props
    assert "ManagedPolicyArns" not in props
    for policy_type in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in template.find_resources(policy_type).values():
            assert {"Ref": role_id} not in policy["Properties"].get("Roles", []), f"a {policy_type} is attached"


@pytest.mark.parametrize("region", REGIONS)
def test_chatbot_may_use_the_topic_key_with_two_spelled_out_actions(synthesized: Any, region: str) -> None:
    _, key = _only(synthesized.template(region), "AWS::KMS::Key")

    (statement,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "chatbot.amazonaws.com"}
    ]
    assert statement == {
        "Sid": "ChatbotUseKey",
        "Effect": "Allow",
        "Principal": {"Service": "chatbot.amazonaws.com"},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": "*",
        # Confused-deputy protection: this account, this stack's channel configuration only
        "Condition": {
            "StringEquals": {"aws:SourceAccount": ACCOUNT},
            "ArnLike": {
                "aws:SourceArn": {
                    "Fn::Join": [
                        "",
                        [
                            "arn:",
                            {"Ref": "AWS::Partition"},
                            f":chatbot::{ACCOUNT}:chat-configuration/slack-channel/imds-enforcer-{region}",
                        ],
                    ]
                }
            },
        },
    }


@pytest.mark.parametrize("region", REGIONS)
def test_cloudwatch_may_use_the_topic_key_only_for_this_accounts_alarms(synthesized: Any, region: str) -> None:
    _, key = _only(synthesized.template(region), "AWS::KMS::Key")

    (statement,) = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if s.get("Sid") == "CloudWatchAlarmsUseKey"]
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {
            "aws:SourceArn": {
                "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":cloudwatch:{region}:{ACCOUNT}:alarm:*"]]
            }
        },
    }


def test_without_slack_ids_no_chat_channel_is_built_and_chatbot_gets_no_key_access() -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_kms as kms

    from app import build_app

    # Given the same context without the workspace and channel, when the app is built (no synth: the tree suffices)...
    context = {k: v for k, v in CONTEXT.items() if k not in ("slack_workspace_id", "slack_channel_id")}
    app = build_app(context=context)

    # ...then no stack holds a chat channel, and no topic key names Chatbot in its policy.
    constructs = app.node.find_all()
    assert any(construct.node.path.endswith("/Report/Key") for construct in constructs)
    assert not [construct.node.path for construct in constructs if "ChatChannel" in construct.node.path]
    # The key policy as the template will have it (the L1's, resolved: Key.policy is not public API).
    keys = [construct for construct in constructs if isinstance(construct, kms.CfnKey)]
    assert len(keys) == len(REGIONS)
    for key in keys:
        policy = json.dumps(cdk.Stack.of(key).resolve(key.key_policy))
        assert "cloudwatch.amazonaws.com" in policy  # the statement an unrelated feature adds is there...
        assert "chatbot" not in policy  # ...and Chatbot's is not


# ---- e-mail --------------------------------------------------------------------------------------------------


def test_email_subscribers_get_warnings_and_worse_and_every_alarm(template: Template) -> None:
    template.has_resource_properties(
        "AWS::SNS::Subscription",
        {
            "Protocol": "email",
            "Endpoint": "secops@example.com",
            "FilterPolicyScope": "MessageBody",
            "FilterPolicy": {
                "$or": [{"findings": {"severity": ["warning", "high"]}}, {"AlarmName": [{"exists": True}]}]
            },
        },
    )


@pytest.mark.parametrize(
    ("minimum", "wanted"),
    [(Severity.INFO, None), (Severity.WARNING, ["warning", "high"]), (Severity.HIGH, ["high"])],
)
def test_email_filter_by_minimum_severity(minimum: Severity, wanted: list[str] | None) -> None:
    policy = email_filter_policy(minimum)

    if wanted is None:
        assert policy is None  # no filter: every report and alarm
    else:
        assert policy == {"$or": [{"findings": {"severity": wanted}}, {"AlarmName": [{"exists": True}]}]}


# ---- alarms may reach the encrypted topic --------------------------------------------------------------------


def test_only_this_stacks_alarms_may_publish_to_the_topic(template: Template) -> None:
    topic_id, _ = _only(template, "AWS::SNS::Topic")
    alarm_ids = sorted(template.find_resources("AWS::CloudWatch::Alarm"))
    _, policy = _only(template, "AWS::SNS::TopicPolicy")

    (statement,) = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sns:Publish"
    assert statement["Resource"] == {"Ref": topic_id}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    source_arns = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sorted(arn["Fn::GetAtt"][0] for arn in source_arns) == alarm_ids


def test_cloudwatch_may_use_the_topic_key_with_two_spelled_out_actions(template: Template) -> None:
    _, key = _only(template, "AWS::KMS::Key")

    (statement,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]

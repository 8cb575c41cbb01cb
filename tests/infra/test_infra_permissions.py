"""The policy builders: least privilege, decided without a synth."""

from __future__ import annotations

from typing import Any

import pytest

from infra.constructs.permissions import (
    UNSCOPABLE_ACTIONS,
    launch_watch_statements,
    slack_notifier_statements,
    usage_gate_statements,
)

INSTANCE_ARN = "arn:aws:ec2:us-east-1:123456789012:instance/*"
METADATA_DEFAULTS = {"ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(set_account_default: bool) -> dict[str, list[dict[str, Any]]]:
    return {
        "launch_watch": [s.to_statement_json() for s in launch_watch_statements(instance_arn=INSTANCE_ARN)],
        "usage_gate": [
            s.to_statement_json()
            for s in usage_gate_statements(
                instance_arn=INSTANCE_ARN, exempt_tag_key="imdsv2-exempt", set_account_default=set_account_default
            )
        ],
    }


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    return {action for statement in statements for action in _as_list(statement["Action"])}


def test_without_set_account_default_the_gate_cannot_touch_the_account_default() -> None:
    statements = _statements(set_account_default=False)

    assert not _actions(statements["usage_gate"]) & METADATA_DEFAULTS
    assert not _actions(statements["launch_watch"]) & METADATA_DEFAULTS


def test_with_set_account_default_the_gate_may_read_and_set_it() -> None:
    assert _actions(_statements(set_account_default=True)["usage_gate"]) >= METADATA_DEFAULTS


@pytest.mark.parametrize("set_account_default", [False, True])
def test_only_unscopable_actions_get_resource_star_and_no_action_is_a_wildcard(set_account_default: bool) -> None:
    for statements in _statements(set_account_default).values():
        for statement in statements:
            assert statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]):
                assert "*" not in action
                if _as_list(statement["Resource"]) == ["*"]:
                    assert action in UNSCOPABLE_ACTIONS
                else:
                    assert _as_list(statement["Resource"]) == [INSTANCE_ARN]


def test_tagging_is_limited_to_the_service_tags_and_the_gate_may_also_write_the_exemption() -> None:
    statements = _statements(set_account_default=False)

    def tag_keys(role: str) -> list[str]:
        (create_tags,) = [s for s in statements[role] if s["Action"] == "ec2:CreateTags"]
        keys: list[str] = create_tags["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
        return keys

    assert tag_keys("launch_watch") == ["imdsv2-enforcer:enforced-at", "imdsv2-enforcer:enforced-by"]
    assert tag_keys("usage_gate") == ["imdsv2-enforcer:enforced-at", "imdsv2-enforcer:enforced-by", "imdsv2-exempt"]


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:slack-??????"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab"


def test_the_slack_notifier_reads_one_secret_and_decrypts_only_with_a_configured_key() -> None:
    without_key = [
        s.to_statement_json()
        for s in slack_notifier_statements(secret_arn=SECRET_ARN, kms_key_arn="", secret_region="x")
    ]
    with_key = [
        s.to_statement_json()
        for s in slack_notifier_statements(secret_arn=SECRET_ARN, kms_key_arn=KEY_ARN, secret_region="us-east-1")
    ]

    assert without_key == [
        {
            "Sid": "ReadSlackWebhookSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": SECRET_ARN,
        }
    ]
    assert with_key[1] == {
        "Sid": "DecryptSlackWebhookSecret",
        "Effect": "Allow",
        "Action": "kms:Decrypt",
        "Resource": KEY_ARN,
        "Condition": {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}},
    }

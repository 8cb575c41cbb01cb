"""DeployConfig: what cdk.json / -c may say, and what the Lambdas get from it."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import aws_cdk as cdk
import pytest

from imds_enforcer.domain.report import Severity
from imds_enforcer.domain.settings import EnforcementMode, Settings
from infra import REPO_ROOT
from infra.config import PLACEHOLDER_TOPIC_ARN, ConfigError, DeployConfig, LogRetentionDays
from infra.constructs.enforcer_function import log_retention

TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:reports"


def _readme_configuration_rows() -> list[tuple[list[str], list[str], str]]:
    """(cdk.json keys, Lambda variables, default) of each row of the README's configuration table."""
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("| `cdk.json` key | Lambda variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.strip().splitlines()[1:]:  # the first line is the |---| separator
        key_cell, variable_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:3])
        rows.append(
            (re.findall(r"`([a-z0-9_]+)`", key_cell), re.findall(r"`([A-Z0-9_]+)`", variable_cell), default_cell)
        )
    return rows


def test_cdk_json_the_models_and_the_readme_table_name_the_same_settings() -> None:
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
    rows = _readme_configuration_rows()
    readme_keys = [key for keys, _, _ in rows for key in keys]
    readme_variables = [variable for _, variables, _ in rows for variable in variables]

    # Every deploy setting is a cdk.json key, once, and the README lists each once.
    assert sorted(context) == sorted(DeployConfig.context_keys())
    assert sorted(readme_keys) == sorted(context)
    # Every runtime setting is in the table once, next to its cdk.json key (its name in lower case) unless the
    # stack sets it itself.
    assert sorted(readme_variables) == sorted(Settings.model_fields)
    for keys, variables, _ in rows:
        for variable in variables:
            if variable in Settings.SET_BY_STACK:
                assert keys == [], variable
            else:
                assert keys == [Settings.context_key(variable)], variable
    # cdk.json holds the defaults, and the README says them (one key a row).
    assert DeployConfig.from_context(context, environ={}) == DeployConfig()
    for keys, _, default in rows:
        assert len(keys) <= 1, keys
        if keys:
            assert _readme_value(default) == context[keys[0]], keys[0]


def _readme_value(cell: str) -> Any:
    text = cell.strip().strip("`")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def test_cdk_json_app_command_is_portable() -> None:
    assert json.loads((REPO_ROOT / "cdk.json").read_text())["app"] == "python3 app.py"


def test_cli_string_values_are_coerced() -> None:
    config = DeployConfig.from_context(
        {
            "enforcement_mode": "fix",
            "lookback_days": "30",
            "regions": "us-east-1, eu-west-1",
            "account": "210987654321",
            "notification_emails": "a@example.com,b@example.org",
            "container_host_tag_keys": '["team:k8s", "platform"]',
            "gate_schedule_hours": "12",
            "rollback_on_rejected": "true",
            "set_account_default": "False",
            "watch_days": "7",
            "coverage_min_ratio": "0.75",
            "log_retention_days": "365",
            "gate_memory_mb": "2048",
            "gate_timeout_minutes": "5",
            "fix_launch_templates": "true",
            "fix_images": "false",
            "guardrails": "scp",
            "guardrail_max_hop_limit": "1",
            "guardrail_role_delivery": "true",
            "break_glass_role_arns": "arn:aws:iam::*:role/BreakGlass",
            "scp_target_ids": "ou-ab12-cdef3456, 123456789012",
        },
        environ={},
    )

    assert config == DeployConfig(
        enforcement_mode=EnforcementMode.FIX,
        lookback_days=30,
        regions=["us-east-1", "eu-west-1"],
        account="210987654321",
        notification_emails=["a@example.com", "b@example.org"],
        container_host_tag_keys=["team:k8s", "platform"],
        gate_schedule_hours=12,
        rollback_on_rejected=True,
        set_account_default=False,
        watch_days=7,
        coverage_min_ratio=0.75,
        log_retention_days=365,
        gate_memory_mb=2048,
        gate_timeout_minutes=5,
        fix_launch_templates=True,
        fix_images=False,
        guardrails="scp",
        guardrail_max_hop_limit=1,
        guardrail_role_delivery=True,
        break_glass_role_arns=["arn:aws:iam::*:role/BreakGlass"],
        scp_target_ids=["ou-ab12-cdef3456", "123456789012"],
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enforcement_mode", "fixx"),
        ("lookback_days", 0),
        ("lookback_days", "two weeks"),
        ("exempt_tag_key", ""),
        ("regions", "us-east-1,mars-north-1"),
        ("regions", []),
        ("account", "1234"),
        ("notification_emails", "secops@example.com,not-an-address"),
        ("container_host_tag_keys", ["x" * 129]),
        ("gate_schedule_hours", "0"),
        ("rollback_on_rejected", "maybe"),
        ("set_account_default", "yes please"),
        ("watch_days", 64),
        ("coverage_min_ratio", "0"),
        ("log_retention_days", "91"),
        ("gate_memory_mb", 64),
        ("gate_timeout_minutes", "16"),
        ("slack_webhook_secret", "https://hooks.slack.com/services/T0/B0/x"),
        ("slack_webhook_secret", "arn:aws:ssm:us-east-1:123456789012:parameter/slack"),
        ("slack_webhook_secret", "has spaces"),
        ("slack_webhook_secret_kms_key_arn", "arn:aws:kms:us-east-1:123456789012:alias/slack"),
        # A key without a secret: nothing would use the grant.
        ("slack_webhook_secret_kms_key_arn", "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab"),
        # Slack ids are upper case, T... for a workspace and C.../G... for a channel (a DM's D... cannot be one).
        ("slack_workspace_id", "t0123abcd"),
        ("slack_workspace_id", "C0123ABCD"),
        ("slack_workspace_id", "T0123"),
        ("slack_workspace_id", "T0123ABCD0123"),
        ("slack_channel_id", "D0123ABCD"),
        ("slack_channel_id", "#imds-reports"),
        ("slack_channel_id", "C0123"),
        ("email_min_severity", "critical"),
        ("fix_launch_templates", "sometimes"),
        ("fix_images", "2"),
        ("guardrails", "on"),
        ("guardrails", "organization"),
        ("guardrail_max_hop_limit", "0"),
        ("guardrail_role_delivery", "later"),
        # A user is not a role, and a pattern matching every role would switch the guardrails off.
        ("break_glass_role_arns", "arn:aws:iam::123456789012:user/alice"),
        ("break_glass_role_arns", "arn:aws:iam::123456789012:role/*"),
        ("scp_target_ids", "ou-nope"),
    ],
)
def test_a_bad_value_fails_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f'cdk.json context "{key}"'):
        DeployConfig.from_context({key: value}, environ={})


@pytest.mark.parametrize(
    ("context", "key", "message"),
    [
        # An SCP attached to nothing protects nothing: the targets are required, even when the key is absent.
        ({"guardrails": "scp"}, "scp_target_ids", "is empty"),
        ({"guardrails": "scp", "scp_target_ids": ""}, "scp_target_ids", "is empty"),
        # An IAM policy has no targets: ignoring them would leave someone believing an OU is covered.
        ({"guardrails": "iam", "scp_target_ids": "ou-ab12-cdef3456"}, "scp_target_ids", "is set"),
        # Another partition's ARN matches no principal here: the break-glass role would be denied with the rest.
        (
            {"regions": "cn-north-1", "break_glass_role_arns": "arn:aws:iam::123456789012:role/BreakGlass"},
            "break_glass_role_arns",
            "not in the partition 'aws-cn'",
        ),
        # Too many break-glass roles no longer fit Organizations' 5,120 characters.
        (
            {
                "guardrails": "scp",
                "scp_target_ids": "r-ab12",
                "break_glass_role_arns": [f"arn:aws:iam::123456789012:role/break-glass-{n:03}" for n in range(40)],
            },
            "break_glass_role_arns",
            "over AWS Organizations' limit",
        ),
    ],
)
def test_inconsistent_guardrail_settings_fail_naming_the_key(context: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f'cdk.json context "{key}".*{message}'):
        DeployConfig.from_context(context, environ={})


@pytest.mark.parametrize(
    ("context", "message"),
    [
        # A workspace without a channel (absent or empty) would deploy nothing: fail instead.
        ({"slack_workspace_id": "T0123ABCD"}, "is empty, but slack_workspace_id is set"),
        ({"slack_workspace_id": "T0123ABCD", "slack_channel_id": ""}, "is empty, but slack_workspace_id is set"),
        ({"slack_channel_id": "C0123ABCD"}, "is set, but slack_workspace_id is empty"),
        ({"slack_workspace_id": "", "slack_channel_id": "G0123ABCD"}, "is set, but slack_workspace_id is empty"),
    ],
)
def test_slack_workspace_and_channel_go_together(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f'cdk.json context "slack_channel_id".*{message}: set both, or neither'):
        DeployConfig.from_context(context, environ={})


def test_a_bad_workspace_id_is_reported_once_naming_its_key() -> None:
    with pytest.raises(ConfigError) as raised:
        DeployConfig.from_context({"slack_workspace_id": "workspace", "slack_channel_id": "C0123ABCD"}, environ={})

    # Not also "slack_channel_id ... is set, but slack_workspace_id is empty": the workspace was given.
    assert 'cdk.json context "slack_workspace_id"' in str(raised.value)
    assert "slack_channel_id" not in str(raised.value)


@pytest.mark.parametrize(
    ("workspace", "channel"),
    [("T0123ABCD", "C0123ABCD"), ("T0123ABCDE12", "G0123ABCDE12"), (" T0123ABCD ", "C0123ABCD")],
)
def test_a_slack_workspace_and_channel_configure_the_chat_channel(workspace: str, channel: str) -> None:
    config = DeployConfig.from_context({"slack_workspace_id": workspace, "slack_channel_id": channel}, environ={})

    assert config.chat_channel_enabled
    assert (config.slack_workspace_id, config.slack_channel_id) == (workspace.strip(), channel)
    # Independent of the webhook notifier: either, both or neither may be deployed.
    assert not config.slack_enabled


def test_by_default_there_is_no_chat_channel() -> None:
    assert not DeployConfig().chat_channel_enabled
    assert not DeployConfig.from_context(
        {"slack_workspace_id": "", "slack_channel_id": ""}, environ={}
    ).chat_channel_enabled


def test_guardrails_live_in_the_first_region_only_and_are_off_by_default() -> None:
    assert DeployConfig().guardrails_region is None
    assert DeployConfig().guardrails_mode is None
    on = DeployConfig(regions=["eu-west-1", "us-east-1"], guardrails="iam")
    assert on.guardrails_region == "eu-west-1"
    assert on.guardrails_mode == "iam"


def test_account_defaults_to_the_cli_account_and_context_wins() -> None:
    environ = {"CDK_DEFAULT_ACCOUNT": "111111111111"}

    assert DeployConfig.from_context({}, environ=environ).account == "111111111111"
    assert DeployConfig.from_context({"account": None}, environ=environ).account == "111111111111"
    assert DeployConfig.from_context({"account": ""}, environ=environ).account == "111111111111"
    assert DeployConfig.from_context({"account": "222222222222"}, environ=environ).account == "222222222222"
    assert DeployConfig.from_context({}, environ={}).account is None


def test_every_allowed_log_retention_maps_to_a_cdk_retention() -> None:
    for days in get_args(LogRetentionDays):
        assert log_retention(days).name  # raises KeyError for a value CloudWatch accepts but we cannot map


def test_lambda_settings_reproduce_the_config_through_the_runtime_model() -> None:
    config = DeployConfig(
        enforcement_mode=EnforcementMode.FIX,
        lookback_days=20,
        exempt_tag_key="keep-imdsv1",
        container_host_tag_keys=["team:k8s"],
        rollback_on_rejected=True,
        set_account_default=True,
        watch_days=9,
        coverage_min_ratio=0.8,
        fix_launch_templates=True,
        fix_images=True,
    )

    env = config.lambda_environment(TOPIC_ARN)
    settings = Settings.from_env(env)

    assert settings == Settings(
        ENFORCEMENT_MODE=EnforcementMode.FIX,
        REPORT_TOPIC_ARN=TOPIC_ARN,
        LOOKBACK_DAYS=20,
        EXEMPT_TAG_KEY="keep-imdsv1",
        CONTAINER_HOST_TAG_KEYS=("team:k8s",),
        ROLLBACK_ON_REJECTED=True,
        SET_ACCOUNT_DEFAULT=True,
        WATCH_DAYS=9,
        COVERAGE_MIN_RATIO=0.8,
        FIX_LAUNCH_TEMPLATES=True,
        FIX_IMAGES=True,
    )


def test_a_token_topic_arn_is_validated_as_a_placeholder_and_kept_as_the_token() -> None:
    token = cdk.Token.as_string(cdk.Fn.ref("ReportTopic"))

    settings = DeployConfig().lambda_settings(token)

    assert token == settings.REPORT_TOPIC_ARN
    assert Settings.from_env({"REPORT_TOPIC_ARN": PLACEHOLDER_TOPIC_ARN}).REPORT_TOPIC_ARN == PLACEHOLDER_TOPIC_ARN


def test_a_malformed_literal_topic_arn_fails_synth() -> None:
    with pytest.raises(ConfigError, match="REPORT_TOPIC_ARN"):
        DeployConfig().lambda_settings("arn:aws:sqs:us-east-1:123456789012:not-a-topic")


def test_empty_settings_are_left_out_of_the_environment() -> None:
    env = DeployConfig().lambda_environment(TOPIC_ARN)

    assert "CONTAINER_HOST_TAG_KEYS" not in env
    assert "SLACK_WEBHOOK_SECRET" not in env
    assert all(value != "" for value in env.values())


def test_the_app_exits_non_zero_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import app

    # Given cdk.json says something impossible (the CLI's -c values reach the App the same way, as context)...
    monkeypatch.setattr(app, "cdk_json_context", lambda: {"lookback_days": "0"})

    assert app.main() == 2
    assert 'cdk.json context "lookback_days"' in capsys.readouterr().err


@pytest.mark.parametrize(
    "secret",
    ["imds-enforcer/slack-webhook", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:slack-AbCdEf"],
)
def test_the_slack_notifier_is_configured_by_a_secret_name_or_arn_and_gets_only_that(secret: str) -> None:
    config = DeployConfig.from_context(
        {
            "slack_webhook_secret": secret,
            "slack_webhook_secret_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab",
            "email_min_severity": "high",
        },
        environ={},
    )

    assert config.slack_enabled
    assert config.email_min_severity is Severity.HIGH
    assert config.slack_environment() == {"SLACK_WEBHOOK_SECRET": secret}
    assert secret == Settings.from_env(config.slack_environment()).SLACK_WEBHOOK_SECRET


def test_by_default_there_is_no_slack_notifier_and_email_gets_everything() -> None:
    config = DeployConfig.from_context({"slack_webhook_secret": "", "slack_webhook_secret_kms_key_arn": ""}, environ={})

    assert not config.slack_enabled
    assert config.email_min_severity is Severity.INFO


# Organization mode (the StackSet path).

ORG = {
    "deployment": "organization",
    "organization_id": "o-abcdefghij",
    "stackset_target_ou_ids": "ou-ab12-cdef3456",
    "central_reports_account": "222222222222",
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("deployment", "org", "Input should be 'account' or 'organization'"),
        ("organization_id", "o-short", "is not an organization id"),
        ("organization_id", "", 'is empty, but deployment is "organization"'),
        ("stackset_target_ou_ids", "ou-nope", "not an OU (ou-...-...) or root (r-...) id"),
        ("stackset_target_ou_ids", "123456789012", "not an OU"),  # StackSets target OUs, not accounts
        ("stackset_target_ou_ids", "ou-ab12-cdef3456,ou-ab12-cdef3456", "an OU is listed twice"),
        ("stackset_target_ou_ids", "", 'is empty, but deployment is "organization"'),
        ("central_reports_account", "2222", "is not a 12-digit account id"),
        ("central_reports_account", "", 'is empty, but deployment is "organization"'),
        ("stackset_call_as", "SELF", "Input should be 'self' or 'delegated_admin'"),
        ("stackset_region_concurrency", "all", "Input should be 'parallel' or 'sequential'"),
        ("stackset_max_concurrent_percentage", "0", "greater than or equal to 1"),
        ("stackset_failure_tolerance_percentage", "101", "less than or equal to 100"),
        ("audit_role_name", "has spaces", "is not an IAM role name"),
    ],
)
def test_a_bad_organization_setting_fails_naming_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f'cdk.json context "{key}"') + ".*" + re.escape(message)):
        DeployConfig.from_context({**ORG, key: value}, environ={})


@pytest.mark.parametrize("key", ["organization_id", "stackset_target_ou_ids", "central_reports_account"])
def test_organization_keys_in_account_mode_fail_instead_of_doing_nothing(key: str) -> None:
    with pytest.raises(ConfigError, match=f'cdk.json context "{key}".*is set, but deployment is "account"'):
        DeployConfig.from_context({key: ORG[key]}, environ={})


def test_organization_mode_takes_the_guardrails_as_an_scp_only() -> None:
    with pytest.raises(ConfigError, match=r'cdk\.json context "deployment".*guardrails is "iam"'):
        DeployConfig.from_context({**ORG, "guardrails": "iam"}, environ={})
    assert DeployConfig.from_context(
        {**ORG, "guardrails": "scp", "scp_target_ids": "r-ab12"}, environ={}
    ).guardrails_mode


def test_the_member_configuration_keeps_the_enforcer_and_moves_the_rest_to_the_central_side() -> None:
    config = DeployConfig.from_context(
        {
            **ORG,
            "regions": "eu-west-1,us-east-1",
            "enforcement_mode": "fix",
            "notification_emails": "secops@example.com",
            "slack_webhook_secret": "imds-enforcer/slack-webhook",
            "slack_workspace_id": "T0123ABCD",
            "slack_channel_id": "C0123ABCD",
            "guardrails": "scp",
            "scp_target_ids": "r-ab12",
        },
        environ={},
    )

    member = config.member_config()

    assert config.organization_mode
    assert config.home_region == "eu-west-1"
    assert config.central_report_topic_arn == "arn:aws:sns:eu-west-1:222222222222:imds-enforcer-org-reports"
    assert member.runtime.ENFORCEMENT_MODE is EnforcementMode.FIX
    assert (member.notification_emails, member.slack_enabled, member.chat_channel_enabled) == ([], False, False)
    assert member.guardrails_mode is None
    # The members' functions publish centrally; the OU comes from the StackSet (a token at synth: a placeholder)
    env = member.lambda_environment(TOPIC_ARN, organizational_unit="ou-ab12-cdef3456")
    assert env["CENTRAL_REPORT_TOPIC_ARN"] == config.central_report_topic_arn
    assert env["ORGANIZATIONAL_UNIT"] == "ou-ab12-cdef3456"
    token = cdk.Token.as_string(cdk.Fn.ref("OrganizationalUnit"))
    assert member.lambda_environment(TOPIC_ARN, organizational_unit=token)["ORGANIZATIONAL_UNIT"] == token


def test_account_mode_lambdas_get_no_organization_settings() -> None:
    env = DeployConfig().lambda_environment(TOPIC_ARN)

    assert "CENTRAL_REPORT_TOPIC_ARN" not in env
    assert "ORGANIZATIONAL_UNIT" not in env
    assert DeployConfig().central_report_topic_arn == ""

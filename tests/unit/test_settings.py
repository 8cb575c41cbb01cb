"""Settings: defaults are safe, bad values are named, and the environment round-trips (the CDK app relies on it)."""

from __future__ import annotations

import pytest

from imds_enforcer.domain.settings import EnforcementMode, Settings, SettingsError


def test_defaults_are_safe() -> None:
    settings = Settings.from_env({})
    assert settings.ENFORCEMENT_MODE is EnforcementMode.FLAG
    assert not settings.fix
    assert settings.LOOKBACK_DAYS == 14
    assert settings.EXEMPT_TAG_KEY == "imdsv2-exempt"
    assert settings.ROLLBACK_ON_REJECTED is False
    assert settings.SET_ACCOUNT_DEFAULT is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENFORCEMENT_MODE", "enforce"),
        ("LOOKBACK_DAYS", "0"),
        ("LOOKBACK_DAYS", "two weeks"),
        ("REPORT_TOPIC_ARN", "arn:aws:sqs:us-east-1:123456789012:queue"),
        ("ROLLBACK_ON_REJECTED", "perhaps"),
        ("COVERAGE_MIN_RATIO", "1.5"),
        ("MIN_RUNNING_DAYS", "0"),
        ("PREPARE_CONTAINER_HOSTS", "sometimes"),
        ("LEDGER_TABLE_NAME", "no spaces allowed"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_environment_round_trip() -> None:
    settings = Settings.from_env(
        {
            "ENFORCEMENT_MODE": "fix",
            "REPORT_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:reports",
            "CONTAINER_HOST_TAG_KEYS": "nomad-client, swarm-node",
            "ROLLBACK_ON_REJECTED": "true",
        }
    )
    assert settings.CONTAINER_HOST_TAG_KEYS == ("nomad-client", "swarm-node")
    assert Settings.from_env(settings.to_env()) == settings


def test_more_running_days_than_the_window_holds_is_refused_naming_both() -> None:
    # Given a window of 5 days and the default of 7 running days: no instance could ever qualify
    with pytest.raises(SettingsError, match=r"MIN_RUNNING_DAYS=7.*more than LOOKBACK_DAYS=5"):
        Settings.from_env({"LOOKBACK_DAYS": "5"})
    assert Settings.from_env({"LOOKBACK_DAYS": "5", "MIN_RUNNING_DAYS": "3"}).MIN_RUNNING_DAYS == 3

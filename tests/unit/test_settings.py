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

"""The central exemption list: its format, checked with errors that name what is wrong; matching; expiry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from imds_enforcer.domain.exemptions import ExemptionListError, parse_exemption_list
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import exempt_finding, is_exempt
from imds_enforcer.domain.settings import Settings

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
PARAMETER = "/platform/imds-exemptions"


def facts(instance_id: str = "i-0aaa", **tags: str) -> InstanceFacts:
    return InstanceFacts(
        instance_id=instance_id,
        state="running",
        http_tokens="optional",
        hop_limit=1,
        http_endpoint="enabled",
        tags=tags,
    )


def central(entries: list[dict[str, Any]]) -> Settings:
    listed = parse_exemption_list(json.dumps({"version": 1, "exemptions": entries}), parameter=PARAMETER, now=NOW)
    return Settings().with_exemptions(listed)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("{not json", "not JSON"),
        ('{"version": 2, "exemptions": []}', "version"),
        ('{"exemptions": [{"instance_id": "i-0aaa", "expires": "2027-01-01"}]}', "exemptions.0.reason"),
        ('{"exemptions": [{"instance_id": "i-0aaa", "reason": "x"}]}', "exemptions.0.expires"),
        ('{"exemptions": [{"instance_id": "i-0aaa", "reason": "x", "expires": "someday"}]}', "exemptions.0.expires"),
        ('{"exemptions": [{"reason": "x", "expires": "2027-01-01"}]}', "exactly one of instance_id or tags"),
        (
            '{"exemptions": [{"instance_id": "i-0aaa", "tags": {"a": "b"}, "reason": "x", "expires": "2027-01-01"}]}',
            "exactly one of instance_id or tags",
        ),
        ('{"exemptions": [{"tags": {}, "reason": "x", "expires": "2027-01-01"}]}', "every instance"),
        ('{"exemptions": [{"instance_id": "vol-1", "reason": "x", "expires": "2027-01-01"}]}', "instance_id"),
        ('{"exemptions": [], "owner": "me"}', "owner"),
        ("[]", "(root)"),
    ],
)
def test_an_invalid_list_is_an_error_naming_the_parameter_and_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(ExemptionListError) as raised:
        parse_exemption_list(text, parameter=PARAMETER, now=NOW)
    assert PARAMETER in str(raised.value)
    assert named in str(raised.value)


def test_the_list_replaces_the_tag() -> None:
    settings = central([{"instance_id": "i-0aaa", "reason": "vendor appliance", "expires": "2027-03-31"}])

    assert is_exempt(facts("i-0aaa"), settings)
    # the tag alone exempts nothing once the list governs
    assert not is_exempt(facts("i-0bbb", **{"imdsv2-exempt": "me"}), settings)
    finding = exempt_finding(facts("i-0aaa"), settings)
    assert "vendor appliance" in finding.reason
    assert finding.details["expires"] == "2027-03-31"


def test_a_tag_selector_matches_every_key_with_its_value_or_any() -> None:
    settings = central([{"tags": {"team": "billing", "env": "*"}, "reason": "rewrite", "expires": "2027-01-15"}])

    assert is_exempt(facts(team="billing", env="prod"), settings)
    assert not is_exempt(facts(team="billing"), settings)
    assert not is_exempt(facts(team="web", env="prod"), settings)


def test_an_expired_entry_exempts_nothing_and_is_reported() -> None:
    settings = central(
        [
            {"instance_id": "i-0aaa", "reason": "old", "expires": "2026-11-30"},
            {"instance_id": "i-0bbb", "reason": "today is its last day", "expires": "2026-12-01"},
        ]
    )

    assert not is_exempt(facts("i-0aaa"), settings)
    assert is_exempt(facts("i-0bbb"), settings)
    [finding] = settings.exemptions.expired_findings()  # type: ignore[attr-defined]
    assert (finding.resource_type, finding.resource_id, finding.action.value) == ("exemption", "i-0aaa", "flagged")
    assert "expired on 2026-11-30" in finding.reason
    assert PARAMETER in finding.reason


def test_without_a_list_the_tag_decides() -> None:
    assert is_exempt(facts(**{"imdsv2-exempt": "x"}), Settings())
    assert not is_exempt(facts(), Settings())

"""The report's organization fields (`account_name`, `organizational_unit`): optional, additive to the contract,
absent when unknown, and shown in the Slack header when present."""

from __future__ import annotations

import json

from emulator import ACCOUNT
from imds_enforcer.domain.report import Action, Finding, Report, render_messages
from imds_enforcer.domain.slack_message import render_payload
from tests.support.schema import assert_valid_report

OU = "ou-ab12-cdef3456"


def _report(**extra: str) -> Report:
    finding = Finding(resource_id="i-0123456789abcdef0", action=Action.FLAGGED, reason="accepts IMDSv1")
    return Report(account=ACCOUNT, region="eu-west-1", trigger="gate", mode="flag", findings=[finding], **extra)


def test_a_report_without_organization_fields_is_unchanged_and_valid() -> None:
    body = json.loads(render_messages(_report())[0].body)

    assert "account_name" not in body
    assert "organizational_unit" not in body
    assert_valid_report(body)


def test_a_report_with_them_is_valid_and_carries_them() -> None:
    body = json.loads(render_messages(_report(account_name="payments", organizational_unit=OU))[0].body)

    assert (body["account_name"], body["organizational_unit"]) == ("payments", OU)
    assert_valid_report(body)


def test_the_slack_header_names_the_account_and_ou_when_known() -> None:
    with_ou = render_payload(_report(organizational_unit=OU)).blocks[0]["text"]["text"]
    with_both = render_payload(_report(account_name="payments", organizational_unit=OU)).blocks[0]["text"]["text"]

    assert with_ou == f"IMDSv2 gate report · {ACCOUNT} ({OU}) · eu-west-1 · flag mode"
    assert with_both == f"IMDSv2 gate report · {ACCOUNT} (payments, {OU}) · eu-west-1 · flag mode"

"""The published JSON Schema is current, and what the service renders validates against it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from imds_enforcer.domain.report import Action, Finding, Report, render_messages, report_json_schema
from tests.support.schema import SCHEMA_FILE, assert_valid_report


def test_docs_schema_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == report_json_schema(), "stale docs/report-schema.json: make schema"


def test_rendered_messages_validate_and_parse_back() -> None:
    findings = [
        Finding(
            resource_id="i-0aaa",
            action=Action.BLOCKED,
            reason="IMDSv1 in use",
            metadata_no_token=42.0,
            last_imdsv1_call_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
        ),
        Finding(resource_id="i-0bbb", action=Action.FAILED, reason="throttled", error_code="RequestLimitExceeded"),
        Finding(resource_type="account", resource_id="123456789012", action=Action.ENFORCED, reason="default set"),
    ]
    report = Report(
        account="123456789012",
        region="us-east-1",
        trigger="gate",
        mode="fix",
        findings=findings,
        totals={"optional_remaining": 2},
    )
    [message] = render_messages(report)
    body = json.loads(message.body)
    assert_valid_report(body)
    parsed = Report.model_validate_json(message.body)
    assert sorted(parsed.findings, key=str) == sorted(report.findings, key=str)


@pytest.mark.parametrize(
    "broken",
    [
        {"schema": "imds-enforcer/report/v2"},
        {"findings": [{"resource_id": "i-1", "action": "deleted", "reason": "x"}]},
        {"account": None},
    ],
)
def test_schema_rejects_what_the_contract_forbids(broken: dict[str, object]) -> None:
    report = Report(
        account="123456789012",
        region="us-east-1",
        trigger="launch",
        mode="flag",
        findings=[Finding(resource_id="i-1", action=Action.FLAGGED, reason="optional")],
    )
    body = json.loads(render_messages(report)[0].body) | broken
    with pytest.raises(AssertionError, match="does not match"):
        assert_valid_report(body)

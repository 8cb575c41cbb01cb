"""Reports: the v1 contract, subjects, attributes, and splitting under the SNS size limit without losing a finding."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from imds_enforcer.domain.report import (
    MAX_MESSAGE_BYTES,
    SUBJECT_LIMIT,
    Action,
    Finding,
    Report,
    render_messages,
)

SNS_LIMIT = 256 * 1024


def report_with(findings: list[Finding]) -> Report:
    return Report(account="123456789012", region="eu-west-1", trigger="launch", mode="fix", findings=findings)


def finding(action: Action, n: int = 0, reason: str = "because") -> Finding:
    return Finding(resource_id=f"i-{n:017x}", action=action, reason=reason)


def test_nothing_to_say_publishes_nothing() -> None:
    assert render_messages(report_with([])) == []


def test_one_message_carries_the_contract_fields_and_filterable_attributes() -> None:
    messages = render_messages(report_with([finding(Action.ENFORCED, 1), finding(Action.FAILED, 2)]))
    assert len(messages) == 1
    body = json.loads(messages[0].body)
    assert body["schema"] == "imds-enforcer/report/v1"
    assert {body["account"], body["region"], body["trigger"], body["mode"]} == {
        "123456789012",
        "eu-west-1",
        "launch",
        "fix",
    }
    # most important first
    assert [f["action"] for f in body["findings"]] == ["failed", "enforced"]
    assert body["findings"][0]["severity"] == "high"
    for item in body["findings"]:
        assert {"resource_type", "resource_id", "action", "reason"} <= item.keys()
    assert messages[0].attributes["action"] == "failed"
    assert messages[0].attributes["severity"] == "high"
    assert messages[0].attributes["trigger"] == "launch"
    assert messages[0].subject == "IMDSv2: 1 failed, 1 enforced in 123456789012/eu-west-1"


def test_subject_stays_within_the_sns_limit() -> None:
    findings = [finding(action, n) for n, action in enumerate(Action)]
    subject = render_messages(report_with(findings))[0].subject
    assert len(subject) <= SUBJECT_LIMIT
    assert subject.startswith("IMDSv2: ")
    assert subject.endswith("in 123456789012/eu-west-1")


@settings(max_examples=15, deadline=None)
@given(count=st.integers(min_value=1, max_value=4000), reason_size=st.integers(min_value=10, max_value=400))
def test_large_reports_split_under_the_limit_and_keep_every_finding(count: int, reason_size: int) -> None:
    findings = [finding(Action.BLOCKED if n % 3 else Action.ENFORCED, n, "x" * reason_size) for n in range(count)]
    messages = render_messages(report_with(findings))
    seen: list[str] = []
    for index, message in enumerate(messages, start=1):
        size = (
            len(message.body.encode())
            + len(message.subject)
            + sum(len(k) + len(v) for k, v in message.attributes.items())
        )
        assert size <= SNS_LIMIT
        assert len(message.body.encode()) <= MAX_MESSAGE_BYTES
        body = json.loads(message.body)
        assert (body["part"], body["parts"]) == (index, len(messages))
        expected = {"blocked": sum(1 for n in range(count) if n % 3), "enforced": len(range(0, count, 3))}
        assert body["run_counts"] == {action: n for action, n in expected.items() if n}
        seen.extend(item["resource_id"] for item in body["findings"])
    assert sorted(seen) == sorted(f.resource_id for f in findings)
    if len(messages) > 1:
        assert "(part 1/" in messages[0].subject

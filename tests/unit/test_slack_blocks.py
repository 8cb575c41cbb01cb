"""The Slack payload of a report: Block Kit within Slack's limits, most important findings first, console links,
and the SNS side and the Slack side reading the same report."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from emulator import ACCOUNT
from imds_enforcer.domain.report import Action, Finding, Report, render_messages
from imds_enforcer.domain.slack_message import (
    MAX_BLOCKS,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    console_url,
    render_payload,
    reports_from_sns_event,
)

REGION = "eu-west-2"
HIGH = {"rejected", "rolled_back", "failed"}
WARNING = {"blocked", "flagged", "insufficient_data"}


def finding(action: Action, n: int, **extra: Any) -> Finding:
    return Finding(resource_id=f"i-{n:017x}", action=action, reason=f"{action.value} because of case {n}", **extra)


def report_with(findings: list[Finding], **extra: Any) -> Report:
    return Report(account=ACCOUNT, region=REGION, trigger="gate", mode="fix", findings=findings, **extra)


def big_report() -> Report:
    """Every action, info ones listed first so the sort has work to do, 30 of each."""
    findings = [
        finding(
            action,
            index * 100 + n,
            metadata_no_token=float(n + 1) if action is Action.BLOCKED else None,
            metadata_no_token_rejected=float(n + 2) if action is Action.REJECTED else None,
            error_code="UnauthorizedOperation" if action is Action.FAILED else None,
        )
        for index, action in enumerate(reversed(list(Action)))
        for n in range(30)
    ]
    return report_with(findings)


def published(report: Report) -> Report:
    """The report as the Slack notifier receives it: through the same rendering the SNS publisher uses."""
    return Report.model_validate_json(render_messages(report)[0].body)


def section_texts(payload_blocks: list[dict[str, Any]]) -> list[str]:
    return [block["text"]["text"] for block in payload_blocks if block["type"] == "section"]


def finding_sections(payload_blocks: list[dict[str, Any]]) -> list[str]:
    return [text for text in section_texts(payload_blocks) if text.startswith(":")]


def action_of(section: str) -> str:
    match = re.search(r"\*([a-z ]+)\*", section)
    assert match, section
    return match.group(1).replace(" ", "_")


def all_texts(payload_blocks: list[dict[str, Any]]) -> str:
    return json.dumps(payload_blocks)


# --- the two sides of the topic fit --------------------------------------------------------------------------


def test_a_published_body_validates_as_a_report_despite_its_computed_keys() -> None:
    # Given a report rendered for SNS, whose JSON carries the computed `counts` and per-finding `severity`
    original = big_report()
    body = render_messages(original)[0].body
    assert {"counts", "schema"} <= json.loads(body).keys()

    # When the Slack side reads it back
    received = Report.model_validate_json(body)

    # Then it is the same report (computed keys ignored on input, recomputed from the findings)
    assert received.counts == original.counts
    assert len(received.findings) == len(original.findings)
    assert received.findings[0].severity.value == "high"


# --- a big report --------------------------------------------------------------------------------------------


def test_a_big_report_stays_inside_slacks_limits() -> None:
    # Given a report with 270 findings of every action
    report = published(big_report())

    # When it is rendered for Slack
    payload = render_payload(report)

    # Then the blocks, sections and header respect Slack's limits
    assert len(payload.blocks) <= MAX_BLOCKS
    assert all(len(text) <= MAX_SECTION_TEXT for text in section_texts(payload.blocks))
    header = payload.blocks[0]
    assert header["type"] == "header"
    assert len(header["text"]["text"]) <= MAX_HEADER_TEXT
    assert payload.text  # the fallback for notifications


def test_a_big_report_lists_high_findings_first_then_warnings_then_says_how_many_more() -> None:
    report = published(big_report())

    payload = render_payload(report)

    actions = [action_of(section) for section in finding_sections(payload.blocks)]
    assert len(actions) == 20
    # 90 high findings exist, so the 20 shown are all high, in the report's order of importance
    assert set(actions) <= HIGH
    assert actions == sorted(actions, key=["rejected", "rolled_back", "failed"].index)
    assert f"and {len(Action) * 30 - 20} more findings" in all_texts(payload.blocks)


def test_warnings_follow_high_findings_when_there_is_room() -> None:
    findings = [finding(Action.ENFORCED, n) for n in range(10)]
    findings += [finding(Action.BLOCKED, 100 + n, metadata_no_token=5.0) for n in range(10)]
    findings += [finding(Action.FAILED, 200 + n, error_code="UnauthorizedOperation") for n in range(3)]

    payload = render_payload(published(report_with(findings)))

    actions = [action_of(section) for section in finding_sections(payload.blocks)]
    assert actions == ["failed"] * 3 + ["blocked"] * 10 + ["enforced"] * 7
    assert "and 3 more findings" in all_texts(payload.blocks)


def test_the_summary_counts_every_action_of_the_report() -> None:
    report = published(big_report())

    payload = render_payload(report)

    summary = section_texts(payload.blocks)[0]
    for action in Action:
        assert f"30 {action.value.replace('_', ' ')}" in summary


def test_findings_carry_the_imdsv1_call_counts_the_error_and_a_console_link_in_the_right_region() -> None:
    findings = [
        finding(Action.REJECTED, 1, metadata_no_token_rejected=42.0),
        finding(Action.BLOCKED, 2, metadata_no_token=1234.0),
        finding(Action.FAILED, 3, error_code="UnauthorizedOperation"),
    ]

    sections = finding_sections(render_payload(published(report_with(findings))).blocks)

    rejected, failed, blocked = sections
    assert "MetadataNoTokenRejected): *42*" in rejected
    assert "MetadataNoToken): *1,234*" in blocked
    assert "`UnauthorizedOperation`" in failed
    link = (
        f"<https://{REGION}.console.aws.amazon.com/ec2/home?region={REGION}"
        f"#InstanceDetails:instanceId=i-{1:017x}|i-{1:017x}>"
    )
    assert link in rejected
    assert "MetadataNoToken" not in failed


def test_a_split_report_names_its_part_and_the_whole_runs_counts() -> None:
    report = report_with([finding(Action.BLOCKED, 1)], part=2, parts=3, run_counts={"blocked": 700, "enforced": 5})

    payload = render_payload(report)

    assert "(part 2/3)" in payload.blocks[0]["text"]["text"]
    summary = section_texts(payload.blocks)[0]
    assert "*Whole run:* 700 blocked · 5 enforced" in summary
    assert "*This part:* 1 blocked" in summary
    assert "700 blocked" in payload.text


# --- a tiny report -------------------------------------------------------------------------------------------


def test_a_tiny_report_is_a_short_message_without_more() -> None:
    # Given one enforced instance at launch
    report = published(
        Report(
            account=ACCOUNT,
            region="us-east-1",
            trigger="launch",
            mode="fix",
            source_event_id="7bf73129-1428-4cd3-a780-95db273d1602",
            generated_at=datetime(2026, 11, 20, 12, 0, tzinfo=UTC),
            findings=[finding(Action.ENFORCED, 7)],
        )
    )

    # When it is rendered
    payload = render_payload(report)

    # Then: header, summary, divider, the finding, footer; and a fallback text like the SNS subject
    assert [block["type"] for block in payload.blocks] == ["header", "section", "divider", "section", "context"]
    assert payload.blocks[0]["text"]["text"] == "IMDSv2 launch report · 123456789012 · us-east-1 · fix mode"
    assert section_texts(payload.blocks)[0] == "*Findings:* 1 enforced"
    assert f"instanceId=i-{7:017x}" in section_texts(payload.blocks)[1]
    assert "more" not in all_texts(payload.blocks)
    assert "7bf73129-1428-4cd3-a780-95db273d1602" in payload.blocks[-1]["elements"][0]["text"]
    assert payload.text == "IMDSv2: 1 enforced in 123456789012/us-east-1"
    assert payload.as_dict()["unfurl_links"] is False


# --- hostile content -----------------------------------------------------------------------------------------


def test_long_and_markup_laden_values_are_escaped_and_cut_inside_the_limits() -> None:
    # Given values longer than any limit, full of mrkdwn control characters
    evil = "<!channel> & <https://evil.example|click> " * 400
    findings = [Finding(resource_id="i-0abc", action=Action.FAILED, reason=evil, error_code=evil)]
    report = Report(account=ACCOUNT, region=REGION, trigger=evil, mode=evil, findings=findings, totals={evil: 1})

    payload = render_payload(report)

    assert len(payload.blocks[0]["text"]["text"]) <= MAX_HEADER_TEXT
    assert all(len(text) <= MAX_SECTION_TEXT for text in section_texts(payload.blocks))
    rendered = all_texts(payload.blocks[1:])
    assert "<!channel>" not in rendered
    assert "<https://evil.example" not in rendered
    assert "&lt;!channel&gt; &amp;" in rendered
    # no escape sequence is cut in half
    assert not re.search(r"&(?!amp;|lt;|gt;)", rendered)


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "region", "expected"),
    [
        (
            "instance",
            "i-0123",
            "ap-south-1",
            "https://ap-south-1.console.aws.amazon.com/ec2/home?region=ap-south-1#InstanceDetails:instanceId=i-0123",
        ),
        (
            "launch_template",
            "lt-0123",
            "eu-west-1",
            "https://eu-west-1.console.aws.amazon.com/ec2/home?region=eu-west-1#LaunchTemplateDetails:launchTemplateId=lt-0123",
        ),
        (
            "image",
            "ami-0123",
            "cn-north-1",
            "https://cn-north-1.console.amazonaws.cn/ec2/home?region=cn-north-1#ImageDetails:imageId=ami-0123",
        ),
        ("account", "123456789012", "us-east-1", None),
        ("launch_configuration", "my-lc", "us-east-1", None),
    ],
)
def test_console_links_per_resource_type(
    resource_type: str, resource_id: str, region: str, expected: str | None
) -> None:
    assert console_url(resource_type, resource_id, region) == expected


def test_a_finding_without_a_console_page_is_shown_without_a_link() -> None:
    report = report_with([Finding(resource_type="account", resource_id=ACCOUNT, action=Action.READY, reason="clean")])

    section = finding_sections(render_payload(report).blocks)[0]

    assert f"`{ACCOUNT}` (account)" in section
    assert "https://" not in section


# --- the SNS event -------------------------------------------------------------------------------------------


def test_each_sns_record_is_parsed_on_its_own() -> None:
    good = render_messages(report_with([finding(Action.BLOCKED, 1)]))[0].body
    event = {
        "Records": [
            {"EventSource": "aws:sns", "Sns": {"MessageId": "m-good", "Message": good}},
            {"EventSource": "aws:sns", "Sns": {"MessageId": "m-text", "Message": "hello"}},
            {"EventSource": "aws:sns", "Sns": {"MessageId": "m-other", "Message": json.dumps({"schema": "v0"})}},
            {"EventSource": "aws:sqs", "body": good},
        ]
    }

    parsed = reports_from_sns_event(event)

    assert [item.message_id for item in parsed] == ["m-good", "m-text", "m-other", "#3"]
    assert parsed[0].report is not None
    assert parsed[0].report.findings[0].resource_id == f"i-{1:017x}"
    assert [item.report for item in parsed[1:]] == [None, None, None]
    assert "not an imds-enforcer report" in (parsed[1].skip_reason or "")
    assert "schema" in (parsed[2].skip_reason or "")
    assert "not an SNS record" in (parsed[3].skip_reason or "")


def test_an_event_without_records_is_one_skip() -> None:
    parsed = reports_from_sns_event({"detail-type": "Scheduled Event"})

    assert len(parsed) == 1
    assert parsed[0].report is None
    assert "no Records" in (parsed[0].skip_reason or "")


# --- hostile messages on the topic ----------------------------------------------------------------------------------

HOSTILE = ["<!channel>", "<!here|here>", "<https://evil.example|click me>", "@channel", "@everyone", "a & b", "<@U123>"]


def _texts(payload: dict[str, Any]) -> list[str]:
    """Every string Slack would render from the payload: the fallback text and every text of every block."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload)
    return found


def _assert_inert(payload: dict[str, Any]) -> None:
    for text in _texts(payload):
        # no mention, broadcast or planted link survives: the only <...> are our own console links
        links = re.findall(r"<([^>]*)>", text)
        assert all(link.startswith("https://") and ".console." in link.split("|")[0] for link in links), text
        assert not re.search(r"@(channel|here|everyone)\b", text, re.IGNORECASE), text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text.replace("&amp;", "")), text


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_field_of_a_report_that_reaches_slack_is_inert(hostile: str) -> None:
    # Given a message on the topic whose every free-text field carries a mention or a link
    report = Report(
        account=hostile,
        region=hostile,
        trigger=hostile,
        mode=hostile,
        source_event_id=hostile,
        totals={hostile: 1},
        findings=[
            Finding(
                resource_type=hostile,
                resource_id=hostile,
                action=Action.FAILED,
                reason=hostile,
                error_code=hostile,
            ),
            Finding(resource_id="i-0abc", action=Action.ENFORCED, reason=f"before {hostile} after"),
        ],
    )

    payload = render_payload(report).as_dict()

    # Then the fallback text and every block render it as text, never as a mention or a link
    _assert_inert(payload)
    assert all(block.get("text", {}).get("verbatim", True) for block in payload["blocks"] if block["type"] == "section")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_field_of_an_alarm_that_reaches_slack_is_inert(hostile: str) -> None:
    from imds_enforcer.domain.slack_message import CloudWatchAlarm, render_alarm

    alarm = CloudWatchAlarm.model_validate(
        {
            "AlarmName": f"rejections {hostile}",
            "NewStateValue": "ALARM",
            "NewStateReason": hostile,
            "AlarmDescription": hostile,
            "AlarmArn": f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:x",
            "AWSAccountId": hostile,
            "StateChangeTime": hostile,
        }
    )

    _assert_inert(render_alarm(alarm).as_dict())


def test_the_fallback_text_of_a_report_is_escaped_and_keeps_its_words() -> None:
    report = report_with([finding(Action.ENFORCED, 1)]).model_copy(update={"account": "<!channel> & co"})

    text = render_payload(report).text

    assert "&lt;!channel&gt; &amp; co" in text
    assert "1 enforced" in text

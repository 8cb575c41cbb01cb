"""How a report reads in Slack: the SNS-to-Lambda event -> reports -> Block Kit payloads. Pure: no I/O here.

The payload stays inside Slack's limits by construction (at most 50 blocks, 3,000 characters in a section, 150 in
the header), so Slack never rejects a post for its size: a rejected post would be a report nobody reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imds_enforcer.domain.report import Finding, Report, Severity, sort_findings, subject_for

# Slack's documented limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_TEXT = 2000
# Enough to read at a glance; the full list is on the report topic. Keeps the block count far below 50.
MAX_FINDINGS_SHOWN = 20
MAX_REASON_CHARS = 600
ELLIPSIS = "…"

SEVERITY_ICON = {
    Severity.HIGH: ":red_circle:",
    Severity.WARNING: ":large_orange_circle:",
    Severity.INFO: ":white_circle:",
}
# Console pages per resource type; other types (account defaults, launch configurations) get no link.
CONSOLE_FRAGMENT = {
    "instance": "InstanceDetails:instanceId=",
    "launch_template": "LaunchTemplateDetails:launchTemplateId=",
    "image": "ImageDetails:imageId=",
}
# mrkdwn treats these three as control characters; everything else is literal.
_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Broadcast words Slack may turn into a mention even without the angle brackets (automatic parsing): a word joiner
# after the @ keeps them words. Every field that reaches Slack is a message on the topic, which is not ours alone.
_BROADCASTS = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SlackPayload:
    text: str
    blocks: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        # Console links would unfurl into noise; the message already says what the link is.
        return {"text": self.text, "blocks": self.blocks, "unfurl_links": False, "unfurl_media": False}


class CloudWatchAlarm(BaseModel):
    """The JSON CloudWatch publishes when an alarm of the stack changes state (it shares the report topic)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(alias="AlarmName")
    state: str = Field(alias="NewStateValue")
    reason: str = Field(default="", alias="NewStateReason")
    description: str | None = Field(default=None, alias="AlarmDescription")
    arn: str = Field(default="", alias="AlarmArn")
    account: str = Field(default="", alias="AWSAccountId")
    changed_at: str = Field(default="", alias="StateChangeTime")

    @property
    def region(self) -> str:
        # arn:aws:cloudwatch:<region>:<account>:alarm:<name>; the message's own "Region" is a display name.
        parts = self.arn.split(":")
        return parts[3] if len(parts) > 3 else ""


@dataclass(frozen=True, slots=True)
class SnsReport:
    """One SNS record: the report (or CloudWatch alarm) it carries, or why it carries neither."""

    message_id: str
    report: Report | None = None
    skip_reason: str | None = None
    alarm: CloudWatchAlarm | None = None


# --- the SNS event ---------------------------------------------------------------------------------------------


def reports_from_sns_event(event: Mapping[str, Any]) -> list[SnsReport]:
    """Every record of an SNS-to-Lambda event, each parsed on its own, so one bad record cannot hide the others."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        return [SnsReport(message_id="", skip_reason="not an SNS event: no Records list")]
    return [_parse_record(index, record) for index, record in enumerate(records)]


def _parse_record(index: int, record: object) -> SnsReport:
    if not isinstance(record, Mapping):
        return SnsReport(message_id=f"#{index}", skip_reason="record is not an object")
    sns = record.get("Sns")
    message_id = str(sns.get("MessageId", f"#{index}")) if isinstance(sns, Mapping) else f"#{index}"
    if record.get("EventSource") != "aws:sns" or not isinstance(sns, Mapping):
        return SnsReport(
            message_id=message_id, skip_reason=f"not an SNS record: EventSource={record.get('EventSource')!r}"
        )
    message = sns.get("Message")
    if not isinstance(message, str) or not message:
        return SnsReport(message_id=message_id, skip_reason="SNS record without a Message")
    alarm = _alarm(message)
    if alarm is not None:
        return SnsReport(message_id=message_id, alarm=alarm)
    try:
        return SnsReport(message_id=message_id, report=Report.model_validate_json(message))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '<message>'}: {issue['msg']}"
            for issue in error.errors(include_url=False)[:5]
        )
        return SnsReport(message_id=message_id, skip_reason=f"Message is not an imds-enforcer report: {problems}")


def _alarm(message: str) -> CloudWatchAlarm | None:
    if '"AlarmName"' not in message:
        return None
    try:
        return CloudWatchAlarm.model_validate_json(message)
    except ValidationError:
        return None


# --- the payload -----------------------------------------------------------------------------------------------


def render_alarm(alarm: CloudWatchAlarm) -> SlackPayload:
    """A CloudWatch alarm of this stack (a rejection, a handler error, a dead letter): short, linked, and loud."""
    firing = alarm.state == "ALARM"
    icon = SEVERITY_ICON[Severity.HIGH] if firing else ":large_green_circle:"
    title = f"{'Action needed: ' if firing else ''}{alarm.state}: {alarm.name}"
    header = {"type": "header", "text": {"type": "plain_text", "text": _escape(title, MAX_HEADER_TEXT)}}
    lines = [f"{icon} *{_escape(alarm.state, 20)}* {_escape(alarm.name, 200)}"]
    if alarm.description:
        lines.append(_escape(alarm.description, 1000))
    if alarm.reason:
        lines.append(f"_{_escape(alarm.reason, 1000)}_")
    if alarm.region:
        region = quote(alarm.region, safe="")
        name = quote(alarm.name, safe="")
        url = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#alarmsV2:alarm/{name}"
        lines.append(f"<{url}|Open the alarm in the CloudWatch console>")
    context = _context(
        f"CloudWatch alarm · {_escape(alarm.account, 20)}/{_escape(alarm.region, 30)} · {_escape(alarm.changed_at, 40)}"
    )
    blocks = [header, _section(_clip_lines("\n".join(lines), MAX_SECTION_TEXT)), context]
    # The fallback text is mrkdwn too (notifications, screen readers): escaped like the blocks.
    return SlackPayload(text=_escape(title, MAX_SECTION_TEXT), blocks=blocks)


def render_payload(report: Report, *, max_findings: int = MAX_FINDINGS_SHOWN) -> SlackPayload:
    """One Slack message for one report (or one part of a split report): the most important findings first."""
    findings = sort_findings(report.findings)
    shown = findings[:max_findings]
    blocks: list[dict[str, Any]] = [_header(report), _section(_summary(report))]
    if report.totals:
        blocks.append(_context(" · ".join(f"{_escape(k, 60)}: {v}" for k, v in list(report.totals.items())[:20])))
    blocks.append({"type": "divider"})
    blocks.extend(_section(_finding_text(finding, region=report.region)) for finding in shown)
    if len(findings) > len(shown):
        more = len(findings) - len(shown)
        where = " in this part" if report.parts > 1 else ""
        blocks.append(
            _context(
                f"…and {more} more finding{'s' if more != 1 else ''}{where}, all listed in the report on the SNS topic"
            )
        )
    if not findings:
        blocks.append(_section("No findings."))
    blocks.append(_context(_footer(report)))
    # The caps above already keep this far below 50; the clamp is the last line of defence, not the plan.
    return SlackPayload(text=_fallback_text(report), blocks=blocks[:MAX_BLOCKS])


def console_url(resource_type: str, resource_id: str, region: str) -> str | None:
    fragment = CONSOLE_FRAGMENT.get(resource_type)
    if fragment is None or not resource_id or not region:
        return None
    region_q = quote(region, safe="")
    if region.startswith("cn-"):
        host = f"{region_q}.console.amazonaws.cn"
    elif region.startswith("us-gov-"):
        host = "console.amazonaws-us-gov.com"
    else:
        host = f"{region_q}.console.aws.amazon.com"
    return f"https://{host}/ec2/home?region={region_q}#{fragment}{quote(resource_id, safe='')}"


def _header(report: Report) -> dict[str, Any]:
    top = _top_severity(report)
    prefix = {Severity.HIGH: "Action needed: ", Severity.WARNING: ""}.get(top, "") if top else ""
    part = f" (part {report.part}/{report.parts})" if report.parts > 1 else ""
    # Organization mode: the account's name and OU, where the report carries them, say whose account this is.
    known = [value for value in (report.account_name, report.organizational_unit) if value]
    account = f"{report.account} ({', '.join(known)})" if known else report.account
    text = f"{prefix}IMDSv2 {report.trigger} report · {account} · {report.region} · {report.mode} mode{part}"
    # plain_text is not parsed for links or mentions, but Slack decodes the same three entities everywhere: escaped
    # like the rest, so no field is trusted to its block type.
    return {"type": "header", "text": {"type": "plain_text", "text": _escape(text, MAX_HEADER_TEXT), "emoji": True}}


def _summary(report: Report) -> str:
    counts = report.counts
    lines = []
    if report.parts > 1 and report.run_counts:
        lines.append(f"*Whole run:* {_counts_line(report.run_counts)}")
        lines.append(f"*This part:* {_counts_line(counts)}")
    else:
        lines.append(f"*Findings:* {_counts_line(counts)}")
    return "\n".join(lines)


def _counts_line(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return " · ".join(f"{count} {_escape(action.replace('_', ' '), 40)}" for action, count in counts.items())


def _finding_text(finding: Finding, *, region: str) -> str:
    url = console_url(finding.resource_type, finding.resource_id, region)
    resource = _escape(finding.resource_id, 200)
    label = f"<{url}|{resource}>" if url else f"`{resource}`"
    kind = "" if finding.resource_type == "instance" else f" ({_escape(finding.resource_type, 40)})"
    lines = [
        f"{SEVERITY_ICON[finding.severity]} *{finding.action.value.replace('_', ' ')}* · {label}{kind}",
        _escape(finding.reason, MAX_REASON_CHARS) or "(no reason given)",
    ]
    if finding.metadata_no_token is not None:
        lines.append(f"IMDSv1 calls in the window (MetadataNoToken): *{_number(finding.metadata_no_token)}*")
    if finding.metadata_no_token_rejected is not None:
        lines.append(
            f"IMDSv1 calls rejected after enforcement (MetadataNoTokenRejected): "
            f"*{_number(finding.metadata_no_token_rejected)}*"
        )
    if finding.last_imdsv1_call_at is not None:
        lines.append(f"last IMDSv1 call: {finding.last_imdsv1_call_at.isoformat(timespec='minutes')}")
    if finding.error_code:
        lines.append(f"error: `{_escape(finding.error_code, 100)}`")
    lines.extend(_caller_lines(finding))
    return "\n".join(lines)


MAX_CALLERS_SHOWN = 3


def _caller_lines(finding: Finding) -> list[str]:
    """The processes that made a blocked instance's IMDSv1 calls (opt-in caller analysis), most calls first."""
    if not finding.callers:
        return []
    lines = ["IMDSv1 callers (ImdsPacketAnalyzer):"]
    for caller in finding.callers[:MAX_CALLERS_SHOWN]:
        chain = " ← ".join(_escape(parent, 80) for parent in caller.parent_chain[:2])
        lines.append(
            f"• *{caller.count}* calls: `{_escape(caller.command_line, 200)}`" + (f" ← {chain}" if chain else "")
        )
    return lines


def _footer(report: Report) -> str:
    parts = [f"{report.schema_id}", f"generated {report.generated_at.isoformat(timespec='seconds')}"]
    if report.source_event_id:
        parts.append(f"event `{_escape(report.source_event_id, 200)}`")
    return " · ".join(parts)


def _fallback_text(report: Report) -> str:
    # The notification and screen-reader text: the same words as the SNS subject, so both channels agree.
    counts = report.run_counts if report.parts > 1 and report.run_counts else report.counts
    # mrkdwn, like the blocks: the account and region in it come from the message, so they are escaped too.
    return _escape(subject_for(report, counts=counts), MAX_SECTION_TEXT)


def _top_severity(report: Report) -> Severity | None:
    severities = {finding.severity for finding in report.findings}
    return next((s for s in (Severity.HIGH, Severity.WARNING, Severity.INFO) if s in severities), None)


# verbatim: Slack does not auto-link bare URLs or auto-parse mentions in the text; our own <url|label> links stay.
def _section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _clip_lines(text, MAX_SECTION_TEXT), "verbatim": True},
    }


def _context(text: str) -> dict[str, Any]:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": _clip_lines(text, MAX_CONTEXT_TEXT), "verbatim": True}],
    }


def _defang(raw: str) -> str:
    return _BROADCASTS.sub("@\u2060\\1", raw)


def _escape(raw: str, limit: int) -> str:
    """Escape for mrkdwn and cap the escaped length, never cutting inside an escape sequence."""
    escaped = [_MRKDWN_ESCAPES.get(char, char) for char in _defang(raw)]
    if sum(len(piece) for piece in escaped) <= limit:
        return "".join(escaped)
    out: list[str] = []
    used = 0
    for piece in escaped:
        if used + len(piece) > limit - len(ELLIPSIS):
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + ELLIPSIS


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def _clip_lines(text: str, limit: int) -> str:
    """Cap at a line boundary, so a link or escape on a later line is dropped whole rather than cut in half."""
    text = text or " "
    if len(text) <= limit:
        return text
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        if used + len(line) + 1 > limit - len(ELLIPSIS):
            break
        kept.append(line)
        used += len(line) + 1
    # Every first line is short by construction; the plain cut is only for a text that breaks that promise.
    return "\n".join(kept) + "\n" + ELLIPSIS if kept else _clip(text, limit)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{int(value):,}" if value == int(value) else f"{value:,.1f}"

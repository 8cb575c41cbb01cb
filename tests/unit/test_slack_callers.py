"""How the callers of a blocked instance read in Slack: the busiest three, their parents, escaped, within limits."""

from __future__ import annotations

from imds_enforcer.domain.report import Action, Finding, ImdsCaller, Report
from imds_enforcer.domain.slack_message import MAX_SECTION_TEXT, render_payload


def _report(callers: list[ImdsCaller]) -> Report:
    finding = Finding(
        resource_id="i-0abc",
        action=Action.BLOCKED,
        reason="39 IMDSv1 calls in the last 14 days",
        metadata_no_token=39,
        callers=callers,
    )
    return Report(account="123456789012", region="us-east-1", trigger="gate", mode="flag", findings=[finding])


def _finding_text(report: Report) -> str:
    sections = [block["text"]["text"] for block in render_payload(report).blocks if block["type"] == "section"]
    return next(text for text in sections if "i-0abc" in text)


def test_the_busiest_three_callers_are_shown_with_their_nearest_parents() -> None:
    callers = [
        ImdsCaller(
            process=f"p{n}",
            command_line=f"/opt/job{n} --since 1d",
            count=40 - n,
            parent_chain=[f"sh: /bin/sh -c job{n}", "crond: /usr/sbin/crond -n", "systemd: /sbin/init"],
        )
        for n in range(5)
    ]

    text = _finding_text(_report(callers))

    assert "IMDSv1 callers (ImdsPacketAnalyzer):" in text
    assert "• *40* calls: `/opt/job0 --since 1d` ← sh: /bin/sh -c job0 ← crond: /usr/sbin/crond -n" in text
    assert "/opt/job2" in text
    assert "/opt/job3" not in text  # the full list is in the report on the topic
    assert "systemd" not in text


def test_a_command_line_is_escaped_and_capped_so_the_section_stays_valid() -> None:
    caller = ImdsCaller(process="sh", command_line="run <script> & " + "x" * 5000, count=3, parent_chain=[])

    text = _finding_text(_report([caller]))

    assert "run &lt;script&gt; &amp; " in text
    assert len(text) <= MAX_SECTION_TEXT


def test_a_finding_without_callers_has_no_callers_lines() -> None:
    assert "IMDSv1 callers" not in _finding_text(_report([]))

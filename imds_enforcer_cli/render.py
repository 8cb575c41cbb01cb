"""How an AuditResult is printed: a rich table, JSON (the report contract), CSV, or Markdown.

Machine formats carry data only (stdout stays parseable); the table and the Markdown end with the summary.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console, Group
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from imds_enforcer.domain.report import Finding, Severity
from imds_enforcer_cli.audit import AuditResult, Readiness, RegionAudit

CSV_COLUMNS = ("region", "resource_type", "resource_id", "action", "severity", "reason", "metadata_no_token")
MARKDOWN_COLUMNS = ("resource_type", "resource_id", "action", "severity", "metadata_no_token", "reason")
STATUS_STYLE = {"ok": "green", "action": "yellow", "info": "cyan", "skipped": "dim"}
SEVERITY_STYLE = {Severity.HIGH: "bold red", Severity.WARNING: "yellow", Severity.INFO: "green"}
STATUS_MARK = {"ok": "ok", "action": "to do", "info": "note", "skipped": "skipped"}


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    MARKDOWN = "markdown"


def _calls(finding: Finding) -> str:
    return "" if finding.metadata_no_token is None else f"{finding.metadata_no_token:g}"


def summary_lines(result: AuditResult) -> list[str]:
    """The end of every human-readable output: what was looked at, what was found, what to do next."""
    regions = ", ".join(region.region for region in result.regions)
    counts = ", ".join(f"{count} {action.replace('_', ' ')}" for action, count in result.counts.items())
    what = "audit (read only)" if result.command == "audit" else f"enforce ({result.mode} mode)"
    lines = [
        f"{what} of account {result.account} in {regions}; look-back {result.lookback_days} days",
        f"findings: {counts or 'none'}",
    ]
    if result.command == "audit":
        lines.append(f"guardrails: {result.guardrail_hint.message}")
    elif result.mode == "flag":
        ready = result.counts.get("ready", 0)
        lines.append(f"dry run: nothing changed; `--apply` would require IMDSv2 on {ready} ready instance(s)")
    return lines


# JSON: one report per region, as the topic would carry it (docs/report-schema.json), plus the audit's view.


def report_dicts(result: AuditResult) -> list[dict[str, Any]]:
    documents = []
    for region in result.regions:
        document: dict[str, Any] = json.loads(region.report.to_json())
        hint = region.guardrail_hint
        # An extra top-level key: the report schema allows it, and consumers of the contract ignore it.
        document["transition"] = {
            "steps": [{"name": step.name, "status": step.status, "detail": step.detail} for step in region.steps()],
            "guardrails": {"readiness": hint.readiness.value, "message": hint.message},
        }
        documents.append(document)
    return documents


def render_json(result: AuditResult) -> str:
    return json.dumps(report_dicts(result), indent=2) + "\n"


def render_csv(result: AuditResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for region in result.regions:
        for finding in region.report.findings:
            writer.writerow(
                (
                    region.region,
                    finding.resource_type,
                    finding.resource_id,
                    finding.action.value,
                    finding.severity.value,
                    finding.reason,
                    _calls(finding),
                )
            )
    return buffer.getvalue()


def _cell(value: str) -> str:
    # A pipe would end the cell and a newline the row.
    return " ".join(value.split()).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines, each cell on one line with its pipes escaped (the audit's and the organization's)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def render_markdown(result: AuditResult) -> str:
    title = "IMDSv2 audit" if result.command == "audit" else f"IMDSv2 gate sweep ({result.mode} mode)"
    lines = [f"# {title}: account {result.account}", ""]
    for region in result.regions:
        lines += [f"## {region.region}", ""]
        lines += markdown_table(
            ("step", "status", "detail"),
            [(step.name, STATUS_MARK[step.status], step.detail) for step in region.steps()],
        )
        lines.append("")
        if region.report.findings:
            lines += markdown_table(
                MARKDOWN_COLUMNS,
                [
                    (
                        finding.resource_type,
                        finding.resource_id,
                        finding.action.value,
                        finding.severity.value,
                        _calls(finding),
                        finding.reason,
                    )
                    for finding in region.report.findings
                ],
            )
        else:
            lines.append("No findings.")
        lines.append("")
    lines += ["## Summary", ""] + [f"- {line}" for line in summary_lines(result)]
    return "\n".join(lines) + "\n"


# The rich table.


def _steps_table(region: RegionAudit) -> Table:
    table = Table(title="transition path", title_justify="left", show_header=True, header_style="bold")
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail")
    for step in region.steps():
        table.add_row(
            Text(step.name), Text(STATUS_MARK[step.status], style=STATUS_STYLE[step.status]), Text(step.detail)
        )
    return table


def _findings_table(region: RegionAudit) -> Table:
    table = Table(title="findings", title_justify="left", show_header=True, header_style="bold")
    table.add_column("resource", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("IMDSv1 calls", justify="right")
    table.add_column("reason")
    for finding in region.report.findings:
        # Text, not str: reasons and ids can hold "[...]", which rich would read as markup.
        table.add_row(
            Text(finding.resource_id),
            Text(finding.resource_type),
            Text(finding.action.value, style=SEVERITY_STYLE[finding.severity]),
            Text(_calls(finding)),
            Text(finding.reason),
        )
    return table


def render_table(result: AuditResult, console: Console) -> None:
    for region in result.regions:
        console.print(Rule(Text(f"{region.region} (account {result.account})"), align="left"))
        parts: list[Any] = [_steps_table(region)]
        if region.report.findings:
            parts.append(_findings_table(region))
        else:
            parts.append(Text("no findings", style="green"))
        console.print(Group(*parts))
    hint = result.guardrail_hint.readiness
    style = "green" if hint is Readiness.READY else "yellow"
    console.print(Rule(Text("summary"), align="left"))
    for line in summary_lines(result):
        console.print(Text(line, style=style if line.startswith("guardrails:") else ""))


def render(result: AuditResult, output_format: OutputFormat, console: Console) -> None:
    """Write the result to `console`'s file in the chosen format."""
    if output_format is OutputFormat.TABLE:
        render_table(result, console)
        return
    text = {
        OutputFormat.JSON: render_json,
        OutputFormat.CSV: render_csv,
        OutputFormat.MARKDOWN: render_markdown,
    }[output_format](result)
    # The console's file directly: rich would wrap long lines and read brackets as markup.
    console.file.write(text)
    console.file.flush()

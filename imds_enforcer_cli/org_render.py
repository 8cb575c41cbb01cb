"""How an organization audit is printed: the roll-up (one row per account-region, an unreadable account as one row,
and the organization's totals) as a rich table, CSV or Markdown; JSON is one report per account-region.

A number that could not be read is `?` in the table and Markdown and empty in CSV, never 0.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imds_enforcer.domain.report import Action
from imds_enforcer_cli.org_audit import AccountRegionResult, OrgAuditResult, Status, UnreadableAccount
from imds_enforcer_cli.render import OutputFormat, markdown_table

COUNT_COLUMNS = ("required", "optional", "ready", "blocked", "insufficient_data", "exempt", "launch_sources_open")
ROLLUP_COLUMNS = (
    "account",
    "name",
    "ou",
    "region",
    "status",
    *COUNT_COLUMNS,
    "account_default",
    "guardrails",
    "note",
)
UNKNOWN = "?"
STATUS_STYLE = {Status.AUDITED: "green", Status.PARTIAL: "yellow", Status.UNREADABLE: "bold red"}


@dataclass(frozen=True)
class Row:
    """One line of the roll-up: an account-region, or an account that could not be entered."""

    account: str
    name: str
    ou: str
    region: str
    status: Status
    counts: dict[str, int | None]
    account_default: str
    guardrails: str
    note: str

    def cells(self, unknown: str) -> list[str]:
        numbers = [unknown if self.counts[name] is None else str(self.counts[name]) for name in COUNT_COLUMNS]
        return [
            self.account,
            self.name,
            self.ou,
            self.region,
            self.status.value,
            *numbers,
            self.account_default,
            self.guardrails,
            self.note,
        ]


def _ou(ou_id: str, ou_name: str) -> str:
    return f"{ou_name} ({ou_id})" if ou_name else ou_id


def _result_row(result: AccountRegionResult) -> Row:
    counts: dict[str, int | None] = {
        "required": None if result.status is Status.UNREADABLE else result.audit.instances_required,
        "optional": result.instances_optional,
        "ready": result.instance_count(Action.READY),
        "blocked": result.instance_count(Action.BLOCKED),
        "insufficient_data": result.instance_count(Action.INSUFFICIENT_DATA),
        "exempt": result.instance_count(Action.EXEMPT),
        "launch_sources_open": result.launch_sources_open,
    }
    return Row(
        account=result.account.id,
        name=result.account.name,
        ou=_ou(result.account.ou_id, result.account.ou_name),
        region=result.region,
        status=result.status,
        counts=counts,
        account_default=result.account_default,
        guardrails=result.guardrails,
        note=result.problem,
    )


def _unreadable_row(account: UnreadableAccount) -> Row:
    return Row(
        account=account.account.id,
        name=account.account.name,
        ou=_ou(account.account.ou_id, account.account.ou_name),
        region=" ".join(account.regions) or "*",
        status=Status.UNREADABLE,
        counts=dict.fromkeys(COUNT_COLUMNS),
        account_default="unknown",
        guardrails="unknown",
        note=account.reason,
    )


def rollup_rows(result: OrgAuditResult) -> list[Row]:
    """Account-regions and unreadable accounts, in account order (name, id), then region."""
    rows = [_result_row(item) for item in result.results] + [_unreadable_row(item) for item in result.unreadable]
    return sorted(rows, key=lambda row: (row.name.lower(), row.account, row.region))


def totals_row(result: OrgAuditResult) -> list[str]:
    """The organization's totals: sums of what was read, and how much of it there is."""
    readable = [item for item in result.results if item.status is not Status.UNREADABLE]
    sums = []
    for name in COUNT_COLUMNS:
        values = [row.counts[name] for row in map(_result_row, result.results)]
        known = [value for value in values if value is not None]
        # Rows that could not be read (in whole or for this column), counted apart: an unknown is never a 0.
        missing = len(values) - len(known) + len(result.unreadable)
        sums.append(f"{sum(known)}" + (f" (+{missing} ?)" if missing else ""))
    required_defaults = sum(1 for item in readable if item.account_default == "required")
    ready = Counter(item.guardrails for item in readable)["ready"]
    statuses = result.status_counts()
    status = ", ".join(
        f"{statuses[key]} {key}" for key in ("audited", "partial", "unreadable", "unreadable accounts") if statuses[key]
    )
    return [
        f"{len(result.accounts)} accounts",
        "",
        "",
        f"{len({item.region for item in result.results})} regions",
        status,
        *sums,
        f"{required_defaults}/{len(readable)} required",
        f"{ready}/{len(readable)} ready",
        "",
    ]


def summary_lines(result: OrgAuditResult) -> list[str]:
    counted = Counter(finding.action.value for finding in result.findings)
    findings = ", ".join(f"{count} {action.replace('_', ' ')}" for action, count in sorted(counted.items()))
    statuses = result.status_counts()
    lines = [
        f"organization audit (read only) from account {result.caller_account}: {len(result.accounts)} accounts, "
        f"{len(result.results)} account-regions read, role {result.role_name}; look-back {result.lookback_days} days",
        f"findings: {findings or 'none'}",
    ]
    readable = [item for item in result.results if item.status is not Status.UNREADABLE]
    ready = Counter(item.guardrails for item in readable)
    lines.append(
        f"guardrails: {ready['ready']} of {len(readable)} account-regions ready"
        + (f", {ready['ready_except_exempt']} ready except exempt instances" if ready["ready_except_exempt"] else "")
        + (f", {ready['unknown']} unknown" if ready["unknown"] else "")
    )
    if not result.complete:
        lines.append(
            f"incomplete: {statuses['unreadable accounts']} account(s) could not be entered, "
            f"{statuses['unreadable']} account-region(s) could not be read, {statuses['partial']} partly read "
            "(see the note column)"
        )
    return lines


def render_json(result: OrgAuditResult) -> str:
    documents: list[dict[str, Any]] = []
    for item in result.results:
        document: dict[str, Any] = json.loads(item.report.to_json())
        # Extra top-level keys, as in the single-account audit: the report schema allows them.
        if item.status is not Status.UNREADABLE:
            hint = item.audit.guardrail_hint
            document["transition"] = {
                "steps": [
                    {"name": step.name, "status": step.status, "detail": step.detail} for step in item.audit.steps()
                ],
                "guardrails": {"readiness": item.guardrails, "message": hint.message},
            }
        document["audit_status"] = {
            "status": item.status.value,
            "unknown_steps": [step.value for step in item.unknown],
            "problem": item.problem,
        }
        documents.append(document)
    for account in result.unreadable:
        for report in account.reports(generated_at=result.generated_at):
            document = json.loads(report.to_json())
            document["audit_status"] = {
                "status": Status.UNREADABLE.value,
                "unknown_steps": [],
                "problem": account.reason,
            }
            documents.append(document)
    documents.sort(key=lambda doc: (str(doc.get("account_name") or "").lower(), doc["account"], doc["region"]))
    return json.dumps(documents, indent=2) + "\n"


def render_csv(result: OrgAuditResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ROLLUP_COLUMNS)
    for row in rollup_rows(result):
        writer.writerow(row.cells(unknown=""))
    return buffer.getvalue()


def render_markdown(result: OrgAuditResult) -> str:
    lines = [f"# IMDSv2 organization audit: from account {result.caller_account}", ""]
    rows = [row.cells(unknown=UNKNOWN) for row in rollup_rows(result)]
    rows.append([f"**{cell}**" if cell else "" for cell in totals_row(result)])
    lines += markdown_table(ROLLUP_COLUMNS, rows)
    lines += ["", f"`{UNKNOWN}`: could not be read (see the note).", "", "## Summary", ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(lines) + "\n"


# The table fits a 140-column terminal: short headers (explained in the legend), the account's name over its id.
TABLE_HEADERS = {
    "required": "req",
    "optional": "opt",
    "ready": "ready",
    "blocked": "blk",
    "insufficient_data": "no data",
    "exempt": "exempt",
    "launch_sources_open": "src",
}
TABLE_DEFAULTS = {"no-preference": "no-pref", "unknown": UNKNOWN}
TABLE_READINESS = {"ready": "ready", "ready_except_exempt": "exempt left", "not_ready": "not ready", "unknown": UNKNOWN}
LEGEND = (
    "req: instances requiring IMDSv2; opt: accepting IMDSv1, of which ready (no IMDSv1 call in the window), blk "
    "(IMDSv1 calls), no data, exempt; src: launch templates, launch configurations and AMIs still allowing IMDSv1; "
    f"no-pref: no account default; {UNKNOWN}: could not be read (see the note), +?: and some not read"
)


def render_table(result: OrgAuditResult, console: Console) -> None:
    table = Table(
        title="IMDSv2 organization audit",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("account", no_wrap=True)
    table.add_column("OU", min_width=6, max_width=16)
    table.add_column("region", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name in COUNT_COLUMNS:
        table.add_column(TABLE_HEADERS[name], justify="right", no_wrap=True)
    table.add_column("default", no_wrap=True)
    table.add_column("guardrails", no_wrap=True)
    table.add_column("note", min_width=16, ratio=1)
    for row in rollup_rows(result):
        numbers = [UNKNOWN if row.counts[name] is None else str(row.counts[name]) for name in COUNT_COLUMNS]
        table.add_row(
            Text(f"{row.name}\n{row.account}" if row.name else row.account),
            Text(row.ou.split(" (")[0] if row.ou else ""),
            Text(row.region.replace(" ", "\n")),
            Text(row.status.value, style=STATUS_STYLE[row.status]),
            *map(Text, numbers),
            Text(TABLE_DEFAULTS.get(row.account_default, row.account_default)),
            Text(TABLE_READINESS.get(row.guardrails, row.guardrails)),
            Text(row.note),
        )
    table.add_section()
    total = totals_row(result)
    table.add_row(
        Text(f"total\n{total[0]}", style="bold"),
        Text(""),
        Text(total[3], style="bold"),
        Text(""),
        # A sum with rows that could not be read is marked `+?` (the markdown and the summary say how many).
        *[Text(cell.split(" (+")[0] + ("+?" if " (+" in cell else ""), style="bold") for cell in total[5:12]],
        Text(total[-3].replace(" required", "\nrequired"), style="bold"),
        Text(total[-2], style="bold"),
        Text(""),
    )
    console.print(table)
    console.print(Text(LEGEND, style="dim"))
    for line in summary_lines(result):
        console.print(Text(line, style="yellow" if line.startswith("incomplete") else ""))


def render_org(result: OrgAuditResult, output_format: OutputFormat, console: Console) -> None:
    if output_format is OutputFormat.TABLE:
        render_table(result, console)
        return
    text = {
        OutputFormat.JSON: render_json,
        OutputFormat.CSV: render_csv,
        OutputFormat.MARKDOWN: render_markdown,
    }[output_format](result)
    console.file.write(text)
    console.file.flush()

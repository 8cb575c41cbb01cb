"""The report contract (`imds-enforcer/report/v1`) and how a report becomes SNS messages. No boto3 here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

SCHEMA_ID: Literal["imds-enforcer/report/v1"] = "imds-enforcer/report/v1"
# SNS allows 256 KiB for the body and the attributes together; keep a margin for attributes and subject.
MAX_MESSAGE_BYTES = 240 * 1024
SUBJECT_LIMIT = 100


class Action(StrEnum):
    ENFORCED = "enforced"
    # A container host that still makes IMDSv1 calls at hop limit 1 got hop limit 2 (tokens left optional), so the
    # SDKs in its containers can reach IMDSv2; the gate enforces it once its evidence is quiet.
    PREPARED = "prepared"
    FLAGGED = "flagged"
    READY = "ready"
    BLOCKED = "blocked"
    INSUFFICIENT_DATA = "insufficient_data"
    EXEMPT = "exempt"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    HIGH = "high"


SEVERITY: dict[Action, Severity] = {
    Action.REJECTED: Severity.HIGH,
    Action.ROLLED_BACK: Severity.HIGH,
    Action.FAILED: Severity.HIGH,
    Action.BLOCKED: Severity.WARNING,
    Action.FLAGGED: Severity.WARNING,
    Action.INSUFFICIENT_DATA: Severity.WARNING,
    Action.ENFORCED: Severity.INFO,
    Action.PREPARED: Severity.INFO,
    Action.READY: Severity.INFO,
    Action.EXEMPT: Severity.INFO,
}
# Most important first: used for the `action` attribute, the subject and the order of findings.
ACTION_ORDER: tuple[Action, ...] = (
    Action.REJECTED,
    Action.ROLLED_BACK,
    Action.FAILED,
    Action.BLOCKED,
    Action.FLAGGED,
    Action.INSUFFICIENT_DATA,
    Action.ENFORCED,
    Action.PREPARED,
    Action.READY,
    Action.EXEMPT,
)
SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.HIGH: 2}


# The resource types findings use (open: a consumer must accept others). The last seven are the IMDS doors outside
# EC2 instances (domain.doors); a Lightsail instance and a SageMaker notebook are named by name, an EKS node group
# as "cluster/nodegroup", an EMR cluster by its id.
RESOURCE_TYPES = (
    "instance",
    "launch_template",
    "launch_configuration",
    "image",
    "account",
    "auto_scaling_group",
    "sagemaker_notebook",
    "lightsail_instance",
    "elastic_beanstalk_environment",
    "batch_compute_environment",
    "eks_nodegroup",
    "ecs_capacity_provider",
    "emr_cluster",
)


class ImdsCaller(BaseModel):
    """A process seen making IMDSv1 calls on an instance (ImdsPacketAnalyzer, run by the gate's opt-in caller
    analysis): its command line and its parents' (secrets in them masked), and how many calls it made."""

    model_config = ConfigDict(frozen=True)

    process: str
    command_line: str
    count: int
    # Parent, grandparent, ... as "process: command line" (the analyzer records up to three).
    parent_chain: list[str] = Field(default_factory=list)
    # The metadata paths it asked for (e.g. /latest/meta-data/iam/security-credentials/), most frequent first.
    paths: list[str] = Field(default_factory=list)


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    resource_type: str = Field(
        default="instance",
        description="What the finding is about; the IMDS doors outside EC2 instances each have their own.",
        examples=list(RESOURCE_TYPES),
    )
    resource_id: str
    action: Action
    reason: str
    error_code: str | None = None
    metadata_no_token: float | None = None
    metadata_no_token_rejected: float | None = None
    last_imdsv1_call_at: datetime | None = None
    details: dict[str, str] = Field(default_factory=dict)
    # The processes that made the IMDSv1 calls of a `blocked` instance, most calls first (opt-in caller analysis).
    callers: list[ImdsCaller] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def severity(self) -> Severity:
        return SEVERITY[self.action]


class Report(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_id: Literal["imds-enforcer/report/v1"] = Field(default=SCHEMA_ID, alias="schema")
    account: str
    region: str
    # Where the organization knows it (organization mode, the org-wide audit): the account's name and its OU.
    account_name: str | None = None
    organizational_unit: str | None = None
    trigger: str
    mode: str
    generated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source_event_id: str | None = None
    # The usage gate's sweep this report closes (one report per sweep, however many runs it took): every part of
    # the report carries it, in the body and as a message attribute, so a subscriber can tie the parts together.
    sweep_id: str | None = None
    # Run-level figures beyond the findings (the gate's fleet totals, deferred work, ...).
    totals: dict[str, int] = Field(default_factory=dict)
    part: int = 1
    parts: int = 1
    # Counts over every part of this run (a split report carries the whole picture in each part).
    run_counts: dict[str, int] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(finding.action for finding in self.findings)
        return {action.value: counted[action] for action in ACTION_ORDER if counted[action]}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def most_severe(actions: Iterable[Action]) -> Action | None:
    present = set(actions)
    return next((action for action in ACTION_ORDER if action in present), None)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    rank = {action: index for index, action in enumerate(ACTION_ORDER)}
    return sorted(findings, key=lambda finding: (rank[finding.action], finding.resource_type, finding.resource_id))


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    subject: str
    body: str
    attributes: dict[str, str]


def subject_for(report: Report, *, counts: dict[str, int] | None = None) -> str:
    counts = counts if counts is not None else report.counts
    summary = ", ".join(f"{count} {action.replace('_', ' ')}" for action, count in counts.items()) or "no findings"
    where = f" in {report.account}/{report.region}"
    part = f" (part {report.part}/{report.parts})" if report.parts > 1 else ""
    runs = report.totals.get("runs", 1)
    if runs > 1:
        # "over 3 runs in 34 min": a sweep continued past one Lambda run's time budget.
        summary += f" over {runs} runs in {max(1, round(report.totals.get('sweep_seconds', 0) / 60))} min"
    subject = f"IMDSv2: {summary}{where}{part}"
    if len(subject) > SUBJECT_LIMIT:
        subject = subject[: SUBJECT_LIMIT - len(where + part) - 3].rstrip(", ") + "..." + where + part
    return subject[:SUBJECT_LIMIT]


def render_messages(report: Report, *, max_bytes: int = MAX_MESSAGE_BYTES) -> list[OutgoingMessage]:
    """One message when it fits, else parts that each carry the whole run's counts and a slice of the findings.

    No finding is ever dropped: every finding lands in exactly one part.
    """
    if not report.findings:
        return []
    findings = sort_findings(report.findings)
    run_counts = report.model_copy(update={"findings": findings}).counts
    chunks = _chunk_findings(report, findings, max_bytes)
    messages = []
    for index, chunk in enumerate(chunks, start=1):
        part = report.model_copy(
            update={"findings": chunk, "part": index, "parts": len(chunks), "run_counts": run_counts}
        )
        action = most_severe(finding.action for finding in chunk) or Action.EXEMPT
        top_action = most_severe(Action(name) for name in run_counts) or action
        messages.append(
            OutgoingMessage(
                subject=subject_for(part, counts=run_counts),
                body=part.to_json(),
                attributes={
                    "action": action.value,
                    "severity": SEVERITY[action].value,
                    "run_action": top_action.value,
                    "trigger": report.trigger,
                    "mode": report.mode,
                    "schema": SCHEMA_ID,
                    **({"sweep_id": report.sweep_id} if report.sweep_id else {}),
                },
            )
        )
    return messages


def _chunk_findings(report: Report, findings: list[Finding], max_bytes: int) -> list[list[Finding]]:
    envelope = len(report.model_copy(update={"findings": []}).to_json().encode()) + 2048  # counts, parts
    budget = max_bytes - envelope
    chunks: list[list[Finding]] = [[]]
    used = 0
    for finding in findings:
        size = len(finding.model_dump_json(exclude_none=True).encode()) + 1
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(finding)
        used += size
    return chunks


def report_json_schema() -> dict[str, object]:
    """The JSON Schema of a published message (docs/report-schema.json is generated from this)."""
    schema = Report.model_json_schema(by_alias=True, mode="serialization")
    # Fields with a non-None default are always written; only the None-able ones may be absent (exclude_none).
    schema["required"] = sorted(
        name for name, prop in schema["properties"].items() if "null" not in json.dumps(prop.get("anyOf", ""))
    )
    finding = schema["$defs"]["Finding"]
    finding["required"] = sorted(
        name for name, prop in finding["properties"].items() if "null" not in json.dumps(prop.get("anyOf", ""))
    )
    schema["$id"] = SCHEMA_ID
    schema["title"] = "IMDSv2 Enforcer report"
    return schema

"""Name the processes that make a blocked instance's IMDSv1 calls (opt-in, CALLER_ANALYSIS).

Called by the usage gate once its decisions are made, with the run's findings and the instances it listed; returns
the same findings, the `blocked` ones annotated. In order:
1. (`read` and `run`) for each blocked instance that carries a command id tag, read that command's result
   (GetCommandInvocation, at most MAX_RESULT_READS a run, most IMDSv1 calls first) and attach the callers, or say
   that it still runs or why it failed;
2. (`run` only) for the other blocked instances, ask SSM which it manages (DescribeInstanceInformation); an instance
   without an agent, with an offline agent, or not on Linux is reported as such; of the rest, the ones with the
   most IMDSv1 calls (CALLER_ANALYSIS_MAX_INSTANCES a run) are tagged `imdsv2-enforcer:caller-analysis` (ssm:
   SendCommand's IAM condition requires that tag), sent the stack's analyzer document in one SendCommand, and tagged
   with its command id, for a later run to read.
Nothing here fails the run: every outcome is a detail of the instance's finding. AWS errors we do not expect are
also collected in `unexpected_errors`, for the gate to raise after its report is out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from imds_enforcer.aws import ec2, ssm
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.callers import (
    CALLER_ANALYSIS_COMMAND_TAG,
    MAX_RESULT_READS,
    AnalysisNote,
    AnalysisStatus,
    AnalysisTags,
    Candidate,
    Invocation,
    ManagedInstance,
    annotate,
    blocked_instances,
    note_from_invocation,
    select,
    selection_tags,
    why_not_analysable,
)
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.report import Finding
from imds_enforcer.domain.settings import CallerAnalysis, Settings
from imds_enforcer.observability import logger

# SSM answers that describe the instance, not a fault of ours (the agent went away between the listing and the send).
EXPECTED_SSM_ERROR_CODES = frozenset({"InvalidInstanceId", "UnsupportedPlatformType", "ThrottlingException"})


@dataclass
class CallerOutcome:
    findings: list[Finding]
    unexpected_errors: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)


def attach_callers(
    findings: Sequence[Finding], instances: Iterable[InstanceFacts], settings: Settings, *, now: datetime
) -> CallerOutcome:
    mode = settings.CALLER_ANALYSIS
    blocked = {finding.resource_id: finding for finding in blocked_instances(findings)}
    if mode is CallerAnalysis.OFF or not blocked:
        return CallerOutcome(findings=list(findings))
    tags = {facts.instance_id: AnalysisTags.of(facts.tags) for facts in instances if facts.instance_id in blocked}
    calls = {instance_id: finding.metadata_no_token or 0.0 for instance_id, finding in blocked.items()}
    run = _Run(settings=settings, now=now)

    _read_results(run, tags, calls)
    if mode is CallerAnalysis.RUN:
        _start_analyses(run, [instance_id for instance_id in blocked if instance_id not in run.notes], calls)

    annotated = [
        annotate(finding, run.notes[finding.resource_id])
        if finding.resource_id in blocked
        and finding.resource_id in run.notes
        and finding is blocked[finding.resource_id]
        else finding
        for finding in findings
    ]
    counted = [note.status for note in run.notes.values()]
    totals = {
        "caller_analyses_started": counted.count(AnalysisStatus.STARTED),
        "caller_analyses_done": counted.count(AnalysisStatus.DONE),
    }
    return CallerOutcome(findings=annotated, unexpected_errors=run.unexpected, totals=totals)


@dataclass
class _Run:
    settings: Settings
    now: datetime
    notes: dict[str, AnalysisNote] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def error(
        self, instance_ids: Iterable[str], operation: str, error: AwsError, tags: AnalysisTags | None = None
    ) -> None:
        detail = f"{operation} failed: {error.code}" + (f" ({error.message})" if error.message else "")
        for instance_id in instance_ids:
            self.notes[instance_id] = AnalysisNote(
                AnalysisStatus.ERROR,
                detail,
                command_id=tags.command_id if tags else None,
                selected_at=tags.selected_at if tags else None,
            )
        context = {"operation": operation, "code": error.code}
        if error.expected or error.code in EXPECTED_SSM_ERROR_CODES:
            logger.warning("caller analysis call failed", extra=context)
        else:
            logger.error("unexpected AWS error in the caller analysis", extra=context)
            self.unexpected.append(f"caller analysis {operation}: {error.code}")


def _read_results(run: _Run, tags: dict[str, AnalysisTags], calls: dict[str, float]) -> None:
    analysed = sorted(
        (instance_id for instance_id, found in tags.items() if found.command_id),
        key=lambda instance_id: (-calls.get(instance_id, 0.0), instance_id),
    )
    for index, instance_id in enumerate(analysed):
        found = tags[instance_id]
        assert found.command_id is not None  # filtered above
        if index >= MAX_RESULT_READS:
            run.notes[instance_id] = AnalysisNote(
                AnalysisStatus.NOT_READ,
                f"its result is not read this run (at most {MAX_RESULT_READS} a run, most IMDSv1 calls first)",
                command_id=found.command_id,
                selected_at=found.selected_at,
            )
            continue
        try:
            item = ssm.command_invocation(found.command_id, instance_id)
        except AwsError as error:
            run.error([instance_id], "GetCommandInvocation", error, found)
            continue
        if item is None:
            # SSM has forgotten the command: the instance may be analysed again (run mode), or says nothing (read).
            logger.info(
                "caller analysis result expired", extra={"instance_id": instance_id, "command": found.command_id}
            )
            continue
        run.notes[instance_id] = note_from_invocation(Invocation.from_api(item), found)


def _start_analyses(run: _Run, instance_ids: Sequence[str], calls: dict[str, float]) -> None:
    if not instance_ids:
        return
    document = run.settings.CALLER_ANALYSIS_DOCUMENT
    if not document:
        for instance_id in instance_ids:
            run.notes[instance_id] = AnalysisNote(
                AnalysisStatus.NOT_CONFIGURED, "no command document to send (CALLER_ANALYSIS_DOCUMENT is empty)"
            )
        return
    try:
        managed = {
            facts.instance_id: facts
            for facts in (ManagedInstance.from_api(item) for item in ssm.managed_instances(instance_ids))
        }
    except AwsError as error:
        run.error(instance_ids, "DescribeInstanceInformation", error)
        return
    eligible: list[Candidate] = []
    for instance_id in instance_ids:
        why = why_not_analysable(managed.get(instance_id))
        if why is None:
            eligible.append(Candidate(instance_id, calls.get(instance_id, 0.0)))
        else:
            run.notes[instance_id] = AnalysisNote(*why)
    quota = run.settings.CALLER_ANALYSIS_MAX_INSTANCES
    selected, waiting = select(eligible, quota)
    for instance_id in waiting:
        run.notes[instance_id] = AnalysisNote(
            AnalysisStatus.WAITING,
            f"at most {quota} instance(s) a run (CALLER_ANALYSIS_MAX_INSTANCES), the most IMDSv1 calls first",
        )
    if selected:
        _send(run, selected, document)


def _send(run: _Run, instance_ids: list[str], document: str) -> None:
    """Tag, send, tag: the selection tag must be there before SendCommand (its IAM condition); the command id after."""
    selection = selection_tags(run.now)
    operation = "CreateTags"
    try:
        ec2.tag_instances(instance_ids, selection)
        operation = "SendCommand"
        command_id = ssm.send_analysis(instance_ids, document=document, minutes=run.settings.CALLER_ANALYSIS_MINUTES)
    except AwsError as error:
        run.error(instance_ids, operation, error)
        return
    tags = AnalysisTags(selected_at=next(iter(selection.values())), command_id=command_id)
    try:
        ec2.tag_instances(instance_ids, {CALLER_ANALYSIS_COMMAND_TAG: command_id})
    except AwsError as error:
        # The command runs; only its id could not be kept on the instances: say it, so a person can read it.
        run.error(
            instance_ids, f"CreateTags {CALLER_ANALYSIS_COMMAND_TAG} (the command {command_id} runs)", error, tags
        )
        return
    logger.info("caller analysis started", extra={"command_id": command_id, "instances": instance_ids})
    for instance_id in instance_ids:
        run.notes[instance_id] = AnalysisNote(
            AnalysisStatus.STARTED,
            f"the ImdsPacketAnalyzer traces for {run.settings.CALLER_ANALYSIS_MINUTES} min",
            command_id=command_id,
            selected_at=tags.selected_at,
        )

"""The audit's transition-path lines for the IMDS doors outside EC2 instances and for the caller analysis: pure
functions of a region's findings, kept apart from `audit.py` so that each reads on its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from imds_enforcer.domain.callers import AnalysisStatus
from imds_enforcer.domain.doors import (
    DOOR_TITLES,
    DOOR_TYPES,
    LIGHTSAIL_INSTANCE,
    SAGEMAKER_NOTEBOOK,
)
from imds_enforcer.domain.report import Action, Finding

# The doors the service can fix in place (opt-in, fix mode), and the setting that does it.
FIXABLE = {SAGEMAKER_NOTEBOOK: "FIX_SAGEMAKER_NOTEBOOKS", LIGHTSAIL_INSTANCE: "FIX_LIGHTSAIL_INSTANCES"}
CALLERS_STEP = "IMDSv1 callers (ImdsPacketAnalyzer)"
_STATUS_WORDS = {
    AnalysisStatus.DONE: "analysed",
    AnalysisStatus.STARTED: "started",
    AnalysisStatus.RUNNING: "running",
    AnalysisStatus.FAILED: "failed",
    AnalysisStatus.NOT_MANAGED: "not managed by SSM",
    AnalysisStatus.AGENT_OFFLINE: "SSM agent offline",
    AnalysisStatus.NOT_LINUX: "not Linux",
    AnalysisStatus.WAITING: "waiting",
    AnalysisStatus.NOT_READ: "not read this run",
    AnalysisStatus.NOT_CONFIGURED: "no document",
    AnalysisStatus.ERROR: "AWS error",
}

T = TypeVar("T")


def door_steps(findings_of: Callable[[str], list[Finding]], make: Callable[[str, str, str], T]) -> list[T]:
    """One line per door type: `ok` when none allows IMDSv1 (exempt ones aside), else `action` with the counts."""
    steps = []
    for kind in DOOR_TYPES:
        found = [item for item in findings_of(kind) if item.action is not Action.EXEMPT]
        failed = sum(1 for item in found if item.action is Action.FAILED)
        open_ = len(found) - failed
        if not found:
            steps.append(make(DOOR_TITLES[kind], "ok", "none allow IMDSv1"))
            continue
        parts = []
        if open_:
            how = (
                f" ({FIXABLE[kind]} fixes them in fix mode)" if kind in FIXABLE else " (only flagged: see the findings)"
            )
            parts.append(f"{open_} allow{'s' if open_ == 1 else ''} IMDSv1{how}")
        if failed:
            parts.append(f"{failed} could not be checked")
        steps.append(make(DOOR_TITLES[kind], "action", "; ".join(parts)))
    return steps


def callers_step(blocked: Sequence[Finding], make: Callable[[str, str, str], T]) -> T | None:
    """What the caller analysis says about the blocked instances; None when nothing is blocked."""
    if not blocked:
        return None
    statuses = Counter(item.details.get("caller_analysis") for item in blocked)
    if set(statuses) == {None}:
        return make(
            CALLERS_STEP,
            "info",
            "not analysed: the stack's caller_analysis=run names the processes making the IMDSv1 calls",
        )
    parts = [
        f"{count} {_STATUS_WORDS.get(AnalysisStatus(status), status)}"
        for status, count in sorted(statuses.items(), key=lambda item: str(item[0]))
        if status is not None
    ]
    named = sorted(
        {f"{caller.process or '?'}" for item in blocked for caller in (item.callers or [])[:1]},
    )
    detail = ", ".join(parts) + (f"; top callers: {', '.join(named)}" if named else "")
    return make(CALLERS_STEP, "action" if named else "info", detail)

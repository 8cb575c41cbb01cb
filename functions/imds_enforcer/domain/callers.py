"""Which process makes a blocked instance's IMDSv1 calls: reading the ImdsPacketAnalyzer's output (as the stack's
command document prints it, see `domain.analyzer_document`), masking secrets in command lines, ranking the callers,
and writing what was found (or why nothing could be) onto the instance's `blocked` finding. Pure: no boto3.

An analysis lives on the instance as two tags the gate writes: `imdsv2-enforcer:caller-analysis` (when it was
selected; the IAM condition of ssm:SendCommand requires it) and `imdsv2-enforcer:caller-analysis-command` (the SSM
command id). A later run reads the command's result by that id, for as long as SSM keeps it; once SSM has forgotten
it (InvocationDoesNotExist), the instance may be selected again if it is still blocked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from imds_enforcer.domain.report import Action, Finding, ImdsCaller

CALLER_ANALYSIS_TAG = "imdsv2-enforcer:caller-analysis"
CALLER_ANALYSIS_COMMAND_TAG = "imdsv2-enforcer:caller-analysis-command"
CALLER_ANALYSIS_TAG_KEYS: tuple[str, str] = (CALLER_ANALYSIS_TAG, CALLER_ANALYSIS_COMMAND_TAG)
TOP_CALLERS = 5
# GetCommandInvocation calls a run makes at most (one per analysed blocked instance): keeps a large fleet's gate run
# near its floor; the instances with the most IMDSv1 calls are read first.
MAX_RESULT_READS = 100
MASK = "****"

# The SSM command states that mean "not finished yet" (GetCommandInvocation's Status).
RUNNING_STATES = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})


class AnalysisStatus(StrEnum):
    """What a blocked finding's `details["caller_analysis"]` says."""

    DONE = "done"  # the analyzer ran; `callers` holds what it saw (maybe nothing)
    STARTED = "started"  # selected and sent this run; the result comes with a later run
    RUNNING = "running"  # sent by an earlier run, not finished yet
    FAILED = "failed"  # the analyzer (or the command) failed on the instance
    NOT_MANAGED = "not_managed"  # no SSM agent registered for it
    AGENT_OFFLINE = "agent_offline"  # registered, but the agent does not answer
    NOT_LINUX = "not_linux"  # the analyzer runs on Linux only
    WAITING = "waiting"  # eligible, but this run's quota (CALLER_ANALYSIS_MAX_INSTANCES) is used
    NOT_READ = "not_read"  # analysed, but this run's read quota (MAX_RESULT_READS) is used
    NOT_CONFIGURED = "not_configured"  # no command document to send (CALLER_ANALYSIS_DOCUMENT)
    ERROR = "error"  # an AWS call of the analysis failed


# --- the instance's analysis tags --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalysisTags:
    selected_at: str | None = None
    command_id: str | None = None

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> AnalysisTags:
        return cls(
            selected_at=tags.get(CALLER_ANALYSIS_TAG) or None,
            command_id=tags.get(CALLER_ANALYSIS_COMMAND_TAG) or None,
        )


def selection_tags(now: datetime) -> dict[str, str]:
    return {CALLER_ANALYSIS_TAG: now.isoformat(timespec="seconds")}


# --- SSM's view of an instance -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagedInstance:
    """One DescribeInstanceInformation item."""

    instance_id: str
    ping_status: str
    platform_type: str
    platform: str = ""

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ManagedInstance:
        name = " ".join(str(item.get(key) or "") for key in ("PlatformName", "PlatformVersion")).strip()
        return cls(
            instance_id=str(item["InstanceId"]),
            ping_status=str(item.get("PingStatus") or "Unknown"),
            platform_type=str(item.get("PlatformType") or "Unknown"),
            platform=name,
        )


def why_not_analysable(managed: ManagedInstance | None) -> tuple[AnalysisStatus, str] | None:
    """None when the analyzer can run there; else the status and the reason."""
    if managed is None:
        return AnalysisStatus.NOT_MANAGED, "not managed by Systems Manager (no SSM agent registered for it)"
    if managed.platform_type != "Linux":
        what = managed.platform or managed.platform_type
        return AnalysisStatus.NOT_LINUX, f"{what} ({managed.platform_type}): the ImdsPacketAnalyzer runs on Linux only"
    if managed.ping_status != "Online":
        return AnalysisStatus.AGENT_OFFLINE, f"its SSM agent is {managed.ping_status}, not Online"
    return None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A blocked instance that may be analysed: its IMDSv1 calls in the window put it in line."""

    instance_id: str
    calls: float


def select(candidates: Iterable[Candidate], quota: int) -> tuple[list[str], list[str]]:
    """(selected, waiting): the instances with the most IMDSv1 calls first, at most `quota` selected."""
    ordered = sorted(candidates, key=lambda candidate: (-candidate.calls, candidate.instance_id))
    ids = [candidate.instance_id for candidate in ordered]
    return ids[:quota], ids[quota:]


# --- the command's result ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One GetCommandInvocation answer."""

    status: str
    status_details: str = ""
    response_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    ended_at: str = ""

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Invocation:
        code = item.get("ResponseCode")
        return cls(
            status=str(item.get("Status") or "Unknown"),
            status_details=str(item.get("StatusDetails") or ""),
            response_code=int(code) if code is not None else None,
            stdout=str(item.get("StandardOutputContent") or ""),
            stderr=str(item.get("StandardErrorContent") or ""),
            ended_at=str(item.get("ExecutionEndDateTime") or ""),
        )

    @property
    def running(self) -> bool:
        return self.status in RUNNING_STATES


@dataclass(frozen=True, slots=True)
class AnalysisOutput:
    """What the document printed (format v1)."""

    status: str
    detail: str = ""
    analyzer: str = ""
    traced_seconds: int | None = None
    imdsv1_calls: int | None = None
    unidentified_calls: int | None = None
    callers: tuple[ImdsCaller, ...] = ()
    complete: bool = True  # False: SSM cut the output at 24,000 characters (some caller lines may be missing)


_HEADER = "imds-enforcer-caller-analysis:"
_CALLER_LINE = re.compile(r"^\s*(\d+) (IMDSv1\(!\) .*)$")
# SSM keeps the first 24,000 characters of a command's standard output.
SSM_OUTPUT_LIMIT = 24_000


def parse_analysis_output(text: str) -> AnalysisOutput | None:
    """Read the document's output; None when it is not (or not yet) that output."""
    lines = text.splitlines()
    if not lines or not any(line.startswith(_HEADER) for line in lines[:3]):
        return None
    fields: dict[str, str] = {}
    caller_lines: list[tuple[int, str]] = []
    in_callers = False
    for line in lines:
        if in_callers:
            match = _CALLER_LINE.match(line)
            if match:
                caller_lines.append((int(match.group(1)), match.group(2)))
            continue
        if line.strip() == "callers:":
            in_callers = True
            continue
        key, _, value = line.partition(":")
        if value:
            fields[key.strip()] = value.strip()
    return AnalysisOutput(
        status=fields.get("status", "unknown"),
        detail=mask_secrets(fields.get("detail", "")),
        analyzer=fields.get("analyzer", ""),
        traced_seconds=_int(fields.get("traced-seconds")),
        imdsv1_calls=_int(fields.get("imdsv1-calls")),
        unidentified_calls=_int(fields.get("unidentified-calls")),
        callers=tuple(rank_callers(caller_lines)),
        complete=len(text) < SSM_OUTPUT_LIMIT,
    )


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


# --- caller lines ------------------------------------------------------------------------------------------------

_REQUEST = " Req details: "
_CALLED_BY = " called by -> "
_ENTRY = re.compile(
    r"^\(?pid:[^: ]*(?::(?P<comm>.*?) argv:(?P<argv>.*?))?(?P<unreadable> Unable to get argv information)?\)?$"
)
NO_ARGV = "(its command line could not be read: the process had ended)"


@dataclass(frozen=True, slots=True)
class _Process:
    process: str
    command_line: str

    def label(self) -> str:
        return f"{self.process}: {self.command_line}" if self.process else self.command_line


def _process(entry: str) -> _Process:
    match = _ENTRY.match(entry.strip())
    if match is None:
        return _Process("", mask_secrets(entry.strip()))
    if match.group("unreadable") or match.group("comm") is None:
        return _Process("?", NO_ARGV)
    return _Process(match.group("comm").strip(), mask_secrets((match.group("argv") or "").strip()))


def parse_caller_line(message: str) -> tuple[_Process, tuple[_Process, ...], str]:
    """One analyzer message: the calling process, its parents (nearest first) and the requested path."""
    body = message.removeprefix("IMDSv1(!) ").strip()
    path = ""
    if _REQUEST in body:
        body, request = body.rsplit(_REQUEST, 1)
        parts = request.split()
        path = parts[1] if len(parts) > 1 else ""
    own, _, chain = body.partition(_CALLED_BY)
    parents = tuple(_process(part) for part in re.split(r"\) -> (?=\(pid:)", chain)) if chain else ()
    return _process(own), parents, path


def rank_callers(lines: Iterable[tuple[int, str]], top: int = TOP_CALLERS) -> list[ImdsCaller]:
    """One caller per process chain (its paths summed), most calls first, at most `top`."""
    counts: dict[tuple[_Process, tuple[_Process, ...]], int] = {}
    paths: dict[tuple[_Process, tuple[_Process, ...]], dict[str, int]] = {}
    for count, message in lines:
        own, parents, path = parse_caller_line(message)
        key = (own, parents)
        counts[key] = counts.get(key, 0) + count
        if path:
            by_path = paths.setdefault(key, {})
            by_path[path] = by_path.get(path, 0) + count
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0][0].label()))
    return [
        ImdsCaller(
            process=own.process,
            command_line=own.command_line,
            count=count,
            parent_chain=[parent.label() for parent in parents],
            paths=[path for path, _ in sorted(paths.get((own, parents), {}).items(), key=lambda kv: (-kv[1], kv[0]))],
        )
        for (own, parents), count in ranked[:top]
    ]


# --- secrets -----------------------------------------------------------------------------------------------------

# A name that holds one of these words names a secret: its value is masked.
_SECRET_NAME = re.compile(
    r"passw(?:or)?d|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credential|auth", re.IGNORECASE
)
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_RANDOM_RUN = re.compile(r"[A-Za-z0-9+_=-]{32,}")
_SCHEMES = ("bearer", "basic")


def mask_secrets(text: str) -> str:
    """The command line with the values of secret-looking arguments (`--password x`, `--db-password=x`,
    `API_KEY: x`), URL passwords, bearer tokens, access key ids and long random-looking strings replaced by ****.
    Errs on the side of masking: a masked path costs a look, a leaked password more.

    A scan over whitespace-separated words, not one big regular expression: argv can be megabytes long, and this
    runs in the Lambda on whatever the analyzer recorded, so its time must grow with the length, never its square.
    """
    parts = re.split(r"(\s+)", text)  # words at even indexes, the whitespace between them at odd ones
    words = parts[0::2]
    index = 0
    while index < len(words):
        word = words[index]
        name, separator, value = _split_assignment(word)
        if separator and value:
            secret = _SECRET_NAME.search(name) is not None
            words[index] = name + separator + MASK if secret else _mask_in_word(word)
        elif _SECRET_NAME.search(word) and (separator or not word[:1].isalnum()):
            # "--password hunter2", "Authorization: Bearer x": the next word is the value (a scheme is kept).
            following = index + 1
            if following < len(words) and words[following].lower() in _SCHEMES:
                following += 1
            if following < len(words) and words[following] and words[following] != MASK:
                words[following] = MASK
                index = following
        elif word.lower() in _SCHEMES and index + 1 < len(words) and words[index + 1] != MASK:
            words[index + 1] = MASK
            index += 1
        else:
            words[index] = _mask_in_word(word)
        index += 1
    parts[0::2] = words
    return "".join(parts)


def _split_assignment(word: str) -> tuple[str, str, str]:
    """`name=value` or `name:value` (not a URL's `scheme://`): (name, separator, value); else (word, "", "")."""
    for separator in ("=", ":"):
        position = word.find(separator)
        if position > 0 and not word.startswith("//", position + 1):
            return word[:position], separator, word[position + 1 :]
    return word, "", ""


def _mask_in_word(word: str) -> str:
    """URL passwords, access key ids and long random-looking runs inside one word."""
    scheme = word.find("://")
    if scheme > 0:
        rest = word[scheme + 3 :]
        at, slash = rest.find("@"), rest.find("/")
        userinfo = rest[:at] if at > 0 and (slash == -1 or at < slash) else ""
        if ":" in userinfo and not userinfo.endswith(MASK):
            user = userinfo.split(":", 1)[0]
            word = word[: scheme + 3] + f"{user}:{MASK}" + rest[at:]
    word = _ACCESS_KEY_ID.sub(MASK, word)
    pieces: list[str] = []
    last = 0
    for match in _RANDOM_RUN.finditer(word):
        run = match.group(0)
        before = word[match.start() - 1] if match.start() else ""
        # Mixed case and digits, and not a piece of a path or a host name.
        if (
            before not in ("/", ".")
            and any(c.islower() for c in run)
            and any(c.isupper() for c in run)
            and any(c.isdigit() for c in run)
        ):
            pieces.append(word[last : match.start()] + MASK)
            last = match.end()
    return "".join(pieces) + word[last:] if pieces else word


# --- the finding -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalysisNote:
    """What one run knows about one blocked instance's analysis."""

    status: AnalysisStatus
    detail: str = ""
    command_id: str | None = None
    selected_at: str | None = None
    output: AnalysisOutput | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


def note_from_invocation(invocation: Invocation, tags: AnalysisTags) -> AnalysisNote:
    """The outcome of a command sent by an earlier run, from GetCommandInvocation."""
    command_id, selected_at = tags.command_id, tags.selected_at
    if invocation.running:
        return AnalysisNote(
            AnalysisStatus.RUNNING, f"SSM status {invocation.status}", command_id=command_id, selected_at=selected_at
        )
    output = parse_analysis_output(invocation.stdout)
    if invocation.status == "Success" and output is not None and output.status == "ok":
        return AnalysisNote(AnalysisStatus.DONE, "", command_id=command_id, selected_at=selected_at, output=output)
    if output is not None and output.status not in ("ok", "unknown"):
        detail = output.status + (f" ({output.detail})" if output.detail else "")
    else:
        stderr = mask_secrets(invocation.stderr.strip().splitlines()[-1]) if invocation.stderr.strip() else ""
        detail = f"SSM status {invocation.status}" + (
            f" ({invocation.status_details})" if invocation.status_details else ""
        )
        if invocation.response_code not in (None, 0, -1):
            detail += f", exit code {invocation.response_code}"
        if stderr:
            detail += f": {stderr[:300]}"
    return AnalysisNote(AnalysisStatus.FAILED, detail, command_id=command_id, selected_at=selected_at, output=output)


def annotate(finding: Finding, note: AnalysisNote) -> Finding:
    """The blocked finding with what the analysis found, in its reason, details and `callers`."""
    details = {**finding.details, "caller_analysis": note.status.value, **note.extra}
    if note.detail:
        details["caller_analysis_detail"] = note.detail
    if note.command_id:
        details["caller_analysis_command_id"] = note.command_id
    if note.selected_at:
        details["caller_analysis_selected_at"] = note.selected_at
    update: dict[str, Any] = {"details": details, "reason": finding.reason + "; " + _sentence(note)}
    output = note.output
    if note.status is AnalysisStatus.DONE and output is not None:
        details["caller_analysis_analyzer"] = output.analyzer
        if output.traced_seconds is not None:
            details["caller_analysis_traced_seconds"] = str(output.traced_seconds)
        if output.imdsv1_calls is not None:
            details["caller_analysis_imdsv1_calls"] = str(output.imdsv1_calls)
        if output.unidentified_calls:
            details["caller_analysis_unidentified_calls"] = str(output.unidentified_calls)
        if not output.complete:
            details["caller_analysis_output_truncated"] = "true"
        update["callers"] = list(output.callers)
    return finding.model_copy(update=update)


def _sentence(note: AnalysisNote) -> str:
    output = note.output
    if note.status is AnalysisStatus.DONE and output is not None:
        traced = f"{output.traced_seconds // 60} min" if output.traced_seconds else "its trace"
        if not output.callers:
            return (
                f"the ImdsPacketAnalyzer saw no IMDSv1 call in {traced}: the caller runs rarely (a cron job, a "
                "deploy); it is analysed again once SSM has forgotten this command"
            )
        top = "; ".join(
            f"{caller.process or '?'} `{_short(caller.command_line)}` ({caller.count})" for caller in output.callers[:3]
        )
        return f"IMDSv1 callers seen by the ImdsPacketAnalyzer in {traced}: {top}"
    sentences = {
        AnalysisStatus.STARTED: f"caller analysis started (SSM command {note.command_id}): its callers come with a "
        "later run",
        AnalysisStatus.RUNNING: f"caller analysis still running (SSM command {note.command_id})",
        AnalysisStatus.FAILED: f"caller analysis failed: {note.detail}",
        AnalysisStatus.NOT_MANAGED: f"caller analysis not possible: {note.detail}",
        AnalysisStatus.AGENT_OFFLINE: f"caller analysis not possible: {note.detail}",
        AnalysisStatus.NOT_LINUX: f"caller analysis not possible: {note.detail}",
        AnalysisStatus.WAITING: f"caller analysis waiting: {note.detail}",
        AnalysisStatus.NOT_READ: f"caller analysis done earlier; {note.detail}",
        AnalysisStatus.NOT_CONFIGURED: f"caller analysis not started: {note.detail}",
        AnalysisStatus.ERROR: f"caller analysis: {note.detail}",
    }
    return sentences.get(note.status, f"caller analysis {note.status.value}")


def _short(command_line: str, limit: int = 80) -> str:
    return command_line if len(command_line) <= limit else command_line[: limit - 1] + "…"


def blocked_instances(findings: Sequence[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.action is Action.BLOCKED and finding.resource_type == "instance"]


# What reading the caller analysis' results takes (the gate in read mode, and the CLI audit, which never sends).
CALLER_ANALYSIS_READ_ACTIONS = ("ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation")

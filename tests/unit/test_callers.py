"""The caller analysis without AWS: the document's own summary (run with bash on a recorded analyzer output), reading
what it prints, masking secrets, ranking callers, and what lands on the blocked finding."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_enforcer.domain.analyzer_document import (
    ANALYZER_COMMIT,
    MAX_CALLER_LINES,
    SUMMARY_FUNCTION,
    analysis_script,
    document_content,
)
from imds_enforcer.domain.callers import (
    CALLER_ANALYSIS_COMMAND_TAG,
    CALLER_ANALYSIS_TAG,
    MASK,
    NO_ARGV,
    AnalysisNote,
    AnalysisStatus,
    AnalysisTags,
    Candidate,
    Invocation,
    ManagedInstance,
    annotate,
    mask_secrets,
    note_from_invocation,
    parse_analysis_output,
    select,
    selection_tags,
    why_not_analysable,
)
from imds_enforcer.domain.report import Action, Finding, Report

RECORDINGS = Path(__file__).resolve().parents[2] / "emulator" / "recordings"
CONSOLE = RECORDINGS / "imds-packet-analyzer-console.txt"
OUTPUT = RECORDINGS / "caller-analysis-output.txt"
UNSUPPORTED = RECORDINGS / "caller-analysis-unsupported-os.txt"
TAGS = AnalysisTags(selected_at="2026-11-30T06:00:00+00:00", command_id="cmd-1")


def _summary(text: str) -> str:
    bash = shutil.which("bash")
    assert bash is not None, "the document is a bash script: these tests need bash, sed, awk, sort"
    result = subprocess.run(
        [bash, "-c", SUMMARY_FUNCTION + "\nimdsv1_summary"], input=text, capture_output=True, text=True, check=True
    )
    return result.stdout


def _blocked(instance_id: str = "i-0abc", calls: float = 39.0) -> Finding:
    return Finding(
        resource_id=instance_id,
        action=Action.BLOCKED,
        reason=f"{calls:g} IMDSv1 calls in the last 14 days: update the software that makes them",
        metadata_no_token=calls,
    )


# --- the document's summary, run for real -------------------------------------------------------------------


def test_the_documents_summary_of_the_recorded_analyzer_output_is_the_recorded_command_output() -> None:
    # Given the analyzer's console output as the document captures it (recorded from its documented format)...
    summary = _summary(CONSOLE.read_text())

    # ...then the document's own summary function prints exactly what the recorded command output holds.
    header = (
        "imds-enforcer-caller-analysis: v1\n"
        f"analyzer: aws/aws-imds-packet-analyzer@{ANALYZER_COMMIT}\n"
        "status: ok\n"
        "traced-seconds: 600\n"
    )
    assert OUTPUT.read_text() == header + summary


def test_the_summary_counts_only_imdsv1_calls_and_strips_pids_request_details_and_secrets() -> None:
    summary = _summary(CONSOLE.read_text())

    assert summary.splitlines()[:3] == ["imdsv1-calls: 39", "unidentified-calls: 1", "callers:"]
    assert "IMDSv2" not in summary  # the SSM agent's token calls are not callers
    assert "dhclient" not in summary  # {MISSING PAYLOAD}: counted as unidentified, not as a caller
    assert "S3cr3t-Pa55" not in summary  # masked on the host already
    assert "hunter2" not in summary
    assert "(pid:*:python3 argv:/usr/bin/python3 /opt/reporting/export.py --db-password **** --since 1d)" in summary
    assert "Host: 169.254.169.254" not in summary  # only the method and the path of the request stay
    assert "pid:2" not in summary  # pids differ on every cron run; they are not what identifies a caller


def test_the_log_file_format_reads_like_the_console_format() -> None:
    console = [line for line in CONSOLE.read_text().splitlines() if line.startswith("[")]
    # The analyzer's log file: "[%(asctime)s] [%(levelname)s] %(message)s", the console prints "[LEVEL] message".
    log = "\n".join(f"[2026-11-30T06:0{index % 10}:00] {line}" for index, line in enumerate(console)) + "\n"

    assert _summary(log) == _summary("\n".join(console) + "\n")


def test_the_summary_keeps_at_most_the_configured_callers_each_cut_to_size() -> None:
    lines = [
        f"[WARNING] IMDSv1(!) (pid:{1000 + n}:job{n} argv:/opt/job{n} {'x' * 2000}) Req details: GET /latest/ HTTP/1.1"
        for n in range(30)
    ]
    printed = _summary("\n".join(lines) + "\n").splitlines()

    assert printed[0] == "imdsv1-calls: 30"
    assert len(printed) == 3 + MAX_CALLER_LINES
    assert all(len(line) <= 1000 for line in printed)


def test_the_whole_document_script_is_valid_bash_and_names_the_pinned_commit() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n"], input=analysis_script(), text=True, check=True)
    content = document_content(default_minutes=12)
    assert content["parameters"]["Minutes"]["default"] == "12"
    assert f"ANALYZER_COMMIT='{ANALYZER_COMMIT}'" in content["mainSteps"][0]["inputs"]["runCommand"]
    # SSM fills in the parameter; nothing else in the script looks like a parameter to it.
    script = analysis_script()
    assert script.count("{{") == 1
    assert "{{ Minutes }}" in script


# --- reading the output --------------------------------------------------------------------------------------


def test_the_recorded_output_reads_as_ranked_callers_with_their_chains_and_paths() -> None:
    output = parse_analysis_output(OUTPUT.read_text())

    assert output is not None
    assert (output.status, output.traced_seconds, output.imdsv1_calls, output.unidentified_calls) == ("ok", 600, 39, 1)
    assert output.analyzer == f"aws/aws-imds-packet-analyzer@{ANALYZER_COMMIT}"
    top, curl, aws_cli, java, unreadable = output.callers
    # The export script's two paths are one caller: 18 + 6 calls, the busier path first.
    assert top.process == "python3"
    assert top.command_line == "/usr/bin/python3 /opt/reporting/export.py --db-password **** --since 1d"
    assert top.count == 24
    assert top.paths == [
        "/latest/meta-data/iam/security-credentials/reporting-role",
        "/latest/meta-data/iam/security-credentials/",
    ]
    assert top.parent_chain == [
        "sh: /bin/sh -c /opt/reporting/run-export.sh",
        "crond: /usr/sbin/crond -n",
        "systemd: /usr/lib/systemd/systemd --switched-root --system --deserialize 21",
    ]
    assert [(c.process, c.count) for c in (curl, aws_cli, java)] == [("curl", 9), ("aws", 3), ("java", 2)]
    assert "hunter2" not in java.command_line
    assert "--spring.datasource.password=****" in java.command_line
    assert (unreadable.process, unreadable.command_line, unreadable.count) == ("?", NO_ARGV, 1)
    assert unreadable.parent_chain[0] == "bash: bash -c sleep 1; curl -s http://169.254.169.254/latest/meta-data/ami-id"


def test_a_failure_output_reads_as_its_status_and_detail() -> None:
    output = parse_analysis_output(UNSUPPORTED.read_text())

    assert output is not None
    assert (output.status, output.detail) == (
        "unsupported-os",
        "alpine 3.20.3: install BCC by hand (see the analyzer's README)",
    )
    assert output.callers == ()


@pytest.mark.parametrize("text", ["", "hello\nworld\n", "status: ok\ncallers:\n      3 IMDSv1(!) (pid:*:x argv:x)\n"])
def test_output_that_is_not_the_documents_is_not_read(text: str) -> None:
    assert parse_analysis_output(text) is None


def test_output_cut_by_ssm_is_marked_incomplete_and_a_huge_command_line_is_read_in_linear_time() -> None:
    text = (
        OUTPUT.read_text() + "       1 IMDSv1(!) (pid:*:x argv:" + "y" * 24_000 + " --password=" + "z" * 24_000 + ")\n"
    )
    started = time.monotonic()
    output = parse_analysis_output(text)
    # A quadratic regular expression took about 30 s on this line; the scan takes milliseconds.
    assert time.monotonic() - started < 1.0
    assert output is not None
    assert output.complete is False


# --- secrets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command_line", "masked"),
    [
        ("app --password hunter2 --port 80", "app --password **** --port 80"),
        ("app --db-password=hunter2", "app --db-password=****"),
        ("env AWS_SECRET_ACCESS_KEY=abc123 app", "env AWS_SECRET_ACCESS_KEY=**** app"),
        ("curl -H Authorization: Bearer eyJhbGciOi.x.y http://x", "curl -H Authorization: Bearer **** http://x"),
        ("psql postgres://admin:s3cret@db:5432/app", "psql postgres://admin:****@db:5432/app"),
        ("tool --key-id AKIAABCDEFGHIJKLMNOP", "tool --key-id ****"),
        ("tool --api_key: 1234", "tool --api_key: ****"),
        ("worker --session Zm9vYmFyYmF6cXV4UVVVWDEyMzQ1Njc4OTBhYmNk", "worker --session ****"),
    ],
)
def test_secrets_in_command_lines_are_masked(command_line: str, masked: str) -> None:
    assert mask_secrets(command_line) == masked


@pytest.mark.parametrize(
    "command_line",
    [
        "/usr/bin/python3 /opt/reporting/export.py --since 1d",
        "curl -s http://169.254.169.254/latest/meta-data/iam/security-credentials/reporting-role",
        "/usr/lib/systemd/systemd --switched-root --system --deserialize 21",
        "java -jar /opt/legacy/wiki.jar --password ****",
    ],
)
def test_ordinary_command_lines_and_masked_ones_stay_as_they_are(command_line: str) -> None:
    assert mask_secrets(command_line) == command_line


# --- eligibility and selection -------------------------------------------------------------------------------


def _managed(platform: str = "Linux", ping: str = "Online") -> ManagedInstance:
    return ManagedInstance.from_api(
        {"InstanceId": "i-1", "PingStatus": ping, "PlatformType": platform, "PlatformName": "Amazon Linux"}
    )


@pytest.mark.parametrize(
    ("managed", "status"),
    [
        (None, AnalysisStatus.NOT_MANAGED),
        (_managed(platform="Windows"), AnalysisStatus.NOT_LINUX),
        (_managed(platform="MacOS"), AnalysisStatus.NOT_LINUX),
        (_managed(ping="ConnectionLost"), AnalysisStatus.AGENT_OFFLINE),
        (_managed(ping="Inactive"), AnalysisStatus.AGENT_OFFLINE),
    ],
)
def test_instances_the_analyzer_cannot_run_on_say_why(managed: ManagedInstance | None, status: AnalysisStatus) -> None:
    found = why_not_analysable(managed)
    assert found is not None
    assert found[0] is status
    assert found[1]


def test_an_online_linux_instance_can_be_analysed() -> None:
    assert why_not_analysable(_managed()) is None


def test_selection_takes_the_most_imdsv1_calls_first_up_to_the_quota() -> None:
    candidates = [Candidate("i-a", 3), Candidate("i-b", 40), Candidate("i-c", 40), Candidate("i-d", 12)]

    assert select(candidates, 2) == (["i-b", "i-c"], ["i-d", "i-a"])
    assert select(candidates, 10) == (["i-b", "i-c", "i-d", "i-a"], [])


def test_the_selection_tag_holds_the_time_and_the_tags_read_back() -> None:
    now = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    tags = {**selection_tags(now), CALLER_ANALYSIS_COMMAND_TAG: "cmd-9"}

    assert tags[CALLER_ANALYSIS_TAG] == "2026-11-30T06:00:00+00:00"
    assert AnalysisTags.of(tags) == AnalysisTags(selected_at="2026-11-30T06:00:00+00:00", command_id="cmd-9")
    assert AnalysisTags.of({}) == AnalysisTags()


# --- a command's result --------------------------------------------------------------------------------------


def test_a_successful_run_becomes_done_with_the_callers() -> None:
    note = note_from_invocation(Invocation(status="Success", response_code=0, stdout=OUTPUT.read_text()), TAGS)

    assert note.status is AnalysisStatus.DONE
    assert note.output is not None
    assert note.output.callers[0].count == 24
    assert (note.command_id, note.selected_at) == ("cmd-1", TAGS.selected_at)


@pytest.mark.parametrize("status", ["Pending", "InProgress", "Delayed"])
def test_an_unfinished_command_is_running(status: str) -> None:
    assert note_from_invocation(Invocation(status=status), TAGS).status is AnalysisStatus.RUNNING


def test_a_failed_run_says_what_the_document_said() -> None:
    invocation = Invocation(status="Failed", status_details="Failed", response_code=1, stdout=UNSUPPORTED.read_text())

    note = note_from_invocation(invocation, TAGS)

    assert note.status is AnalysisStatus.FAILED
    assert note.detail == "unsupported-os (alpine 3.20.3: install BCC by hand (see the analyzer's README))"


@pytest.mark.parametrize(
    ("invocation", "detail"),
    [
        (
            Invocation(status="TimedOut", status_details="ExecutionTimedOut", response_code=-1),
            "SSM status TimedOut (ExecutionTimedOut)",
        ),
        (
            Invocation(status="Failed", status_details="Failed", response_code=127, stderr="python3: not found\n"),
            "SSM status Failed (Failed), exit code 127: python3: not found",
        ),
        (
            Invocation(status="Success", stdout="something else\n"),
            "SSM status Success",
        ),
    ],
)
def test_a_run_without_the_documents_output_says_what_ssm_said(invocation: Invocation, detail: str) -> None:
    note = note_from_invocation(invocation, TAGS)
    assert (note.status, note.detail) == (AnalysisStatus.FAILED, detail)


# --- the blocked finding -------------------------------------------------------------------------------------


def test_a_done_analysis_puts_the_callers_on_the_blocked_finding() -> None:
    output = parse_analysis_output(OUTPUT.read_text())
    note = AnalysisNote(AnalysisStatus.DONE, command_id="cmd-1", selected_at=TAGS.selected_at, output=output)

    finding = annotate(_blocked(), note)

    assert finding.action is Action.BLOCKED  # the verdict is the gate's; the analysis only explains it
    assert finding.callers is not None
    assert [c.process for c in finding.callers] == [
        "python3",
        "curl",
        "aws",
        "java",
        "?",
    ]
    assert finding.reason.startswith("39 IMDSv1 calls in the last 14 days")
    assert "IMDSv1 callers seen by the ImdsPacketAnalyzer in 10 min: python3 `/usr/bin/python3" in finding.reason
    assert finding.details == {
        "caller_analysis": "done",
        "caller_analysis_command_id": "cmd-1",
        "caller_analysis_selected_at": TAGS.selected_at,
        "caller_analysis_analyzer": f"aws/aws-imds-packet-analyzer@{ANALYZER_COMMIT}",
        "caller_analysis_traced_seconds": "600",
        "caller_analysis_imdsv1_calls": "39",
        "caller_analysis_unidentified_calls": "1",
    }
    # The published report carries them (and validates: see test_report_schema).
    report = Report(account="123456789012", region="us-east-1", trigger="gate", mode="flag", findings=[finding])
    assert '"callers":[{"process":"python3"' in report.to_json()


def test_a_done_analysis_that_saw_nothing_says_so() -> None:
    quiet = parse_analysis_output(
        "imds-enforcer-caller-analysis: v1\nstatus: ok\ntraced-seconds: 300\nimdsv1-calls: 0\n"
        "unidentified-calls: 0\ncallers:\n"
    )

    finding = annotate(_blocked(), AnalysisNote(AnalysisStatus.DONE, output=quiet))

    assert finding.callers == []
    assert "saw no IMDSv1 call in 5 min" in finding.reason


@pytest.mark.parametrize(
    ("note", "words"),
    [
        (AnalysisNote(AnalysisStatus.STARTED, "x", command_id="cmd-2"), "caller analysis started (SSM command cmd-2)"),
        (AnalysisNote(AnalysisStatus.NOT_MANAGED, "not managed by Systems Manager"), "not possible: not managed"),
        (AnalysisNote(AnalysisStatus.FAILED, "unsupported-os (alpine)"), "caller analysis failed: unsupported-os"),
        (AnalysisNote(AnalysisStatus.WAITING, "at most 5 instance(s) a run"), "caller analysis waiting: at most 5"),
    ],
)
def test_every_other_outcome_is_a_detail_and_a_sentence_never_callers(note: AnalysisNote, words: str) -> None:
    finding = annotate(_blocked(), note)

    assert words in finding.reason
    assert finding.details["caller_analysis"] == note.status.value
    assert finding.callers is None
    assert finding.action is Action.BLOCKED


SECRET_VALUES = st.text(
    alphabet=st.characters(categories=("L", "N"), include_characters="!#%+-_"), min_size=1, max_size=40
)
WORDS = st.text(alphabet=st.characters(categories=("L", "N", "P", "Z")), max_size=200)


@given(before=WORDS, secret=SECRET_VALUES, flag=st.sampled_from(["--password", "--db-password=", "API_KEY=", "token:"]))
def test_a_secret_given_to_a_secret_flag_never_survives_and_masking_twice_changes_nothing(
    before: str, secret: str, flag: str
) -> None:
    separator = "" if flag.endswith(("=", ":")) else " "
    command_line = f"{before} {flag}{separator}{secret} --verbose".strip()

    masked = mask_secrets(command_line)

    assert f"{flag}{separator}{MASK}" in masked
    assert mask_secrets(masked) == masked

"""The SSM command document that runs AWS's ImdsPacketAnalyzer on a blocked instance. Pure data: the stack deploys it
(infra), the caller analysis sends it (workflows) and `domain.callers` reads what it prints.

The analyzer (github.com/aws/aws-imds-packet-analyzer, Apache-2.0) has no releases ("version numbers are best-effort
only"), so the document pins a commit: the archive of that commit is fetched over TLS from GitHub, never a branch.
The trace is bounded (`timeout`, at most 30 minutes, the `Minutes` parameter is digits only), its output stays in
the command's own output (SSM keeps the first 24,000 characters; the summary is built to fit), and the script
removes the analyzer's files when it ends. Packages it installs (BCC and kernel headers) stay: removing them could
break software that needs them; the README says so.

What the script prints (format v1), read by `domain.callers.parse_analysis_output`:

    imds-enforcer-caller-analysis: v1
    analyzer: aws/aws-imds-packet-analyzer@<commit>
    status: ok | not-root | unsupported-os | install-failed | download-failed | analyzer-failed | bad-parameter
    detail: <why, when the status is not ok>
    traced-seconds: <n>
    imdsv1-calls: <n>
    unidentified-calls: <n>          ({MISSING PAYLOAD}: the kernel gave no payload, v1 or v2 cannot be told)
    callers:
       <count> IMDSv1(!) (pid:*:<comm> argv:<argv>) called by -> (pid:*:...) ... Req details: <METHOD> <path>

One caller line per distinct process chain and path (pids replaced by `*`, so a cron job's runs count together),
most calls first, at most 20 lines of at most 1,000 characters; values of secret-looking arguments are masked on
the host already (the Lambda masks again, with more rules, before anything is reported).
"""

from __future__ import annotations

from typing import Any

ANALYZER_REPOSITORY = "aws/aws-imds-packet-analyzer"
# The newest commit seen (src/bpf.c with the kernel 6.12 fixes, after 1.4.0's token redaction). Verify before
# deploying; changing it changes the document, which CloudFormation publishes as a new version.
ANALYZER_COMMIT = "18f15c9393f00515443702a912ed6dd9605c09e1"
OUTPUT_FORMAT = "v1"
MINUTES_PARAMETER = "Minutes"
MAX_MINUTES = 30
# The step's own limit: the longest trace, plus the package install and download, plus the kill grace.
STEP_TIMEOUT_SECONDS = MAX_MINUTES * 60 + 900
STEP_NAME = "traceImdsv1Callers"
MAX_CALLER_LINES = 20
MAX_LINE_CHARS = 1000

# The summary, as a shell function: the document runs it on the analyzer's output, and the tests run the very same
# text on a recorded output (the analyzer's console format; its log file format, with timestamps, reads the same).
SUMMARY_FUNCTION = r"""imdsv1_summary() {
  # stdin: the analyzer's output; stdout: the call counts and the callers, most calls first.
  sed -E -n \
    -e '/\{MISSING PAYLOAD\}/ { s/.*/UNIDENTIFIED/p; d }' \
    -e '/IMDSv1\(!\) / {
      s/^.*IMDSv1\(!\) /IMDSv1(!) /
      s/\(pid:[0-9]+:/(pid:*:/g
      s/\(pid:[0-9]+ Unable/(pid:* Unable/g
      s/ Req details: ([A-Z]+ [^ ,]*)[^,]*(,.*)?$/ Req details: \1/
      s/((passw(or)?d|pwd|secret|token|api.?key|access.?key|credential|auth)[[:alnum:]_-]*)(=| +)[^ )]+/\1\4****/Ig
      s#(://[^/:@ ]+:)[^@ ]+@#\1****@#g
      p
    }' \
  | awk '$0 == "UNIDENTIFIED" { u++; next } { n++; c[$0]++ }
      END { printf "imdsv1-calls: %d\nunidentified-calls: %d\ncallers:\n", n, u
            for (k in c) printf "%7d %s\n", c[k], k }' \
  | { read -r calls; read -r unidentified; read -r header
      printf '%s\n%s\n%s\n' "$calls" "$unidentified" "$header"
      LC_ALL=C sort -k1,1nr -k2 | head -n MAX_LINES | cut -c1-MAX_CHARS; }
}""".replace("MAX_LINES", str(MAX_CALLER_LINES)).replace("MAX_CHARS", str(MAX_LINE_CHARS))

_SCRIPT = r"""#!/bin/bash
# imds-enforcer caller analysis (output format @FORMAT@): trace IMDS calls with AWS's ImdsPacketAnalyzer for a
# bounded time and print the IMDSv1 callers. The analyzer's files are removed at the end; BCC stays installed.
set -u
MINUTES='{{ @MINUTES_PARAMETER@ }}'
ANALYZER_COMMIT='@COMMIT@'
ANALYZER_URL="https://codeload.github.com/@REPOSITORY@/tar.gz/${ANALYZER_COMMIT}"
echo "imds-enforcer-caller-analysis: @FORMAT@"
echo "analyzer: @REPOSITORY@@${ANALYZER_COMMIT}"
fail() { echo "status: $1"; echo "detail: $2"; exit 1; }
case "$MINUTES" in ''|*[!0-9]*) fail bad-parameter "Minutes=$MINUTES" ;; esac
[ "$MINUTES" -ge 1 ] && [ "$MINUTES" -le @MAX_MINUTES@ ] || fail bad-parameter "Minutes=$MINUTES (1 to @MAX_MINUTES@)"
[ "$(id -u)" = 0 ] || fail not-root "the analyzer needs root; the SSM agent does not run as root here"
WORK="$(mktemp -d /tmp/imds-enforcer-analyzer.XXXXXX)" || fail analyzer-failed "no temporary folder"
trap 'rm -rf "$WORK"' EXIT
[ -r /etc/os-release ] || fail unsupported-os "no /etc/os-release"
. /etc/os-release
command -v python3 >/dev/null 2>&1 || fail unsupported-os "no python3 on ${ID:-unknown} ${VERSION_ID:-}"
if ! python3 -c 'import bcc' >/dev/null 2>&1; then
  case "${ID:-}:${VERSION_ID:-}" in
    amzn:2023*) dnf install -y -q bcc-tools python3-bcc "kernel-devel-$(uname -r)" ;;
    amzn:2) amazon-linux-extras enable BCC && yum install -y -q "kernel-devel-$(uname -r)" bcc ;;
    rhel:*|rocky:*|almalinux:*|centos:*|ol:*) yum install -y -q bcc-tools python3-bcc ;;
    debian:*|ubuntu:*) apt-get install -y -q bpfcc-tools python3-bpfcc "linux-headers-$(uname -r)" ;;
    sles:*|opensuse-leap:*) zypper --non-interactive install bcc-tools python3-bcc ;;
    *) fail unsupported-os "${ID:-unknown} ${VERSION_ID:-}: install BCC by hand (see the analyzer's README)" ;;
  esac > "$WORK/install.log" 2>&1 || fail install-failed "$(tail -n 3 "$WORK/install.log" | tr '\n' ' ')"
  python3 -c 'import bcc' >/dev/null 2>&1 || fail install-failed "BCC installed, but python3 cannot import bcc"
fi
python3 -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as answer, open(sys.argv[2], "wb") as out:
    out.write(answer.read())' "$ANALYZER_URL" "$WORK/analyzer.tar.gz" >"$WORK/download.log" 2>&1 \
  || fail download-failed "$ANALYZER_URL: $(tail -n 1 "$WORK/download.log")"
tar -xzf "$WORK/analyzer.tar.gz" -C "$WORK" || fail download-failed "$ANALYZER_URL is not a tar.gz archive"
SRC="$WORK/aws-imds-packet-analyzer-${ANALYZER_COMMIT}/src"
[ -f "$SRC/imds_snoop.py" ] || fail download-failed "no src/imds_snoop.py in the archive"
cd "$SRC" || fail download-failed "cannot enter $SRC"
# SIGINT ends the analyzer's poll loop cleanly; -u: nothing is lost in a buffer when it stops.
timeout --signal=INT --kill-after=30 "$((MINUTES * 60))" python3 -u imds_snoop.py >"$WORK/trace.txt" 2>"$WORK/trace.err"
code=$?
# 124 (or 137 after the kill grace): the time limit ended the trace, as meant. Anything else: it stopped by itself.
[ "$code" = 124 ] || [ "$code" = 137 ] \
  || fail analyzer-failed "exit $code: $(tail -n 3 "$WORK/trace.err" | tr '\n' ' ')"
@SUMMARY_FUNCTION@
echo "status: ok"
echo "traced-seconds: $((MINUTES * 60))"
imdsv1_summary <"$WORK/trace.txt"
"""


def analysis_script() -> str:
    """The document's shell script, `{{ Minutes }}` left for SSM to fill in."""
    script = _SCRIPT
    for placeholder, value in (
        ("@SUMMARY_FUNCTION@", SUMMARY_FUNCTION),
        ("@MINUTES_PARAMETER@", MINUTES_PARAMETER),
        ("@MAX_MINUTES@", str(MAX_MINUTES)),
        ("@REPOSITORY@", ANALYZER_REPOSITORY),
        ("@COMMIT@", ANALYZER_COMMIT),
        ("@FORMAT@", OUTPUT_FORMAT),
    ):
        script = script.replace(placeholder, value)
    return script


def document_content(*, default_minutes: int = 10) -> dict[str, Any]:
    """The Command document (schema 2.2), Linux only: a Windows instance is skipped by SSM itself, and the caller
    analysis never selects one (it reads the platform from SSM first)."""
    return {
        "schemaVersion": "2.2",
        "description": "imds-enforcer: run AWS's ImdsPacketAnalyzer (pinned commit) for a bounded time and print "
        "the processes that make IMDSv1 calls",
        "parameters": {
            MINUTES_PARAMETER: {
                "type": "String",
                "description": f"How long to trace, in minutes (1 to {MAX_MINUTES})",
                "default": str(default_minutes),
                # Digits only: the value lands in a shell script.
                "allowedPattern": r"^([1-9]|[12][0-9]|30)$",
            }
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": STEP_NAME,
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {
                    "timeoutSeconds": str(STEP_TIMEOUT_SECONDS),
                    "runCommand": analysis_script().splitlines(),
                },
            }
        ],
    }

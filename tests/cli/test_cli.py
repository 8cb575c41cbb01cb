"""The `imds-enforcer` command line, run in-process (`main(argv)`) against moto, and once as the installed script.

Every test reads as Given / When / Then and asserts what a user sees (stdout, stderr, exit code) and what AWS holds
afterwards (the instances' options and tags, the account default, the launch templates).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from rich.console import Console

from emulator import ACCOUNT
from emulator.fleet import backdate_launch
from imds_enforcer.aws import clients
from imds_enforcer.domain.guardrails import iam_policy_document, scp_document
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG
from imds_enforcer_cli import aws as cli_aws
from imds_enforcer_cli.audit import Readiness, run_audit
from imds_enforcer_cli.main import main
from imds_enforcer_cli.render import CSV_COLUMNS, MARKDOWN_COLUMNS, render_table
from tests.support.aws import launch, metadata_options, tags_of
from tests.support.faults import Fault, _Body, ec2_error, inject
from tests.support.metrics import aged, put_daily
from tests.support.schema import assert_valid_report

ROOT = Path(__file__).resolve().parents[2]
CLEAN = [0.0] * 14
# Environment that asks for every change the service can make: the audit and the dry run must ignore all of it.
EVERY_CHANGE = {
    "ENFORCEMENT_MODE": "fix",
    "ROLLBACK_ON_REJECTED": "true",
    "SET_ACCOUNT_DEFAULT": "true",
    "FIX_LAUNCH_TEMPLATES": "true",
    "FIX_IMAGES": "true",
}


@dataclass(frozen=True)
class SmallFleet:
    ready: str  # optional, 30 days old, zero IMDSv1 calls on every day
    blocked: str  # optional, 5 IMDSv1 calls in the window
    no_data: str  # optional, no metrics at all
    exempt: str  # optional, exemption tag
    required: str  # already IMDSv2-only
    rejecting: str  # enforced by the gate 2 days ago, IMDSv1 calls rejected since (a rollback candidate)
    template_id: str  # a launch template whose default version allows IMDSv1

    @property
    def instances(self) -> tuple[str, ...]:
        return (self.ready, self.blocked, self.no_data, self.exempt, self.required, self.rejecting)


@pytest.fixture
def fleet(aws: None) -> SmallFleet:
    (ready,) = launch()
    (blocked,) = launch()
    (no_data,) = launch()
    (exempt,) = launch(tags={"imdsv2-exempt": "vendor appliance"})
    (required,) = launch(tokens="required", hop_limit=2)
    stamp = aged(2).strftime("%Y-%m-%dT%H:%M:%SZ")
    (rejecting,) = launch(tokens="required", tags={ENFORCED_AT_TAG: stamp, ENFORCED_BY_TAG: "usage_gate"})
    backdate_launch([ready, blocked, no_data, exempt, required, rejecting], 30)
    put_daily(ready, CLEAN)
    put_daily(blocked, [0.0, 0.0, 5.0, *CLEAN[3:]])
    put_daily(exempt, CLEAN)
    put_daily(rejecting, [3.0, 0.0], metric="MetadataNoTokenRejected")
    template = boto3.client("ec2").create_launch_template(
        LaunchTemplateName="legacy-web",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "MetadataOptions": {"HttpTokens": "optional"}},
    )
    return SmallFleet(
        ready=ready,
        blocked=blocked,
        no_data=no_data,
        exempt=exempt,
        required=required,
        rejecting=rejecting,
        template_id=template["LaunchTemplate"]["LaunchTemplateId"],
    )


def snapshot(fleet: SmallFleet) -> dict[str, Any]:
    """Everything the service could change: instance options and tags, the account default, template versions."""
    ec2 = boto3.client("ec2")
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=fleet.template_id)["LaunchTemplateVersions"]
    return {
        "instances": {
            instance_id: (metadata_options(instance_id), tags_of(instance_id)) for instance_id in fleet.instances
        },
        "account_default": ec2.get_instance_metadata_defaults().get("AccountLevel", {}),
        "template": (
            len(versions),
            ec2.describe_launch_templates(LaunchTemplateIds=[fleet.template_id])["LaunchTemplates"][0][
                "DefaultVersionNumber"
            ],
        ),
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def actions(report: dict[str, Any]) -> dict[str, str]:
    return {finding["resource_id"]: finding["action"] for finding in report["findings"]}


# audit


def test_audit_json_is_one_valid_report_per_region_with_every_step(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the small fleet; When the audit runs with JSON output
    code, out, err = run(capsys, "audit", "--format", "json")

    # Then stdout is a list of reports that match the published schema
    assert code == 0, err
    reports = json.loads(out)
    assert [report["region"] for report in reports] == ["us-east-1"]
    (report,) = reports
    assert_valid_report(report)
    assert report["trigger"] == "audit"
    assert report["mode"] == "flag"
    assert report["account"] == ACCOUNT
    # And every step of the transition path is there: instances by readiness, the watch, sources, account default
    found = actions(report)
    assert found[fleet.ready] == "ready"
    assert found[fleet.blocked] == "blocked"
    assert found[fleet.no_data] == "insufficient_data"
    assert found[fleet.exempt] == "exempt"
    assert found[fleet.rejecting] == "rejected"
    assert fleet.required not in found
    assert found[fleet.template_id] == "flagged"
    assert found[ACCOUNT] == "flagged"
    blocked = next(item for item in report["findings"] if item["resource_id"] == fleet.blocked)
    assert blocked["metadata_no_token"] == 5.0
    assert report["totals"]["instances_required"] == 2
    assert report["totals"]["instances_optional"] == 4
    assert report["totals"]["account_default_required"] == 0
    # And the guardrail hint says the account is not ready, and why
    assert report["transition"]["guardrails"]["readiness"] == "not_ready"
    assert "3 instances" in report["transition"]["guardrails"]["message"]
    assert "launch template" in report["transition"]["guardrails"]["message"]
    assert err == ""  # no progress bar, no logs off a terminal


def test_audit_csv_has_one_row_per_finding(fleet: SmallFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "--format", "csv")

    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_id = {row["resource_id"]: row for row in rows}
    assert set(by_id) == {*fleet.instances, fleet.template_id, ACCOUNT} - {fleet.required}
    assert len(rows) == len(run_audit(regions=["us-east-1"]).findings)
    assert by_id[fleet.blocked]["metadata_no_token"] == "5"
    assert by_id[fleet.blocked]["severity"] == "warning"
    assert by_id[fleet.rejecting]["severity"] == "high"
    assert by_id[fleet.template_id]["resource_type"] == "launch_template"
    assert {row["region"] for row in rows} == {"us-east-1"}


def test_audit_markdown_has_a_table_per_region(fleet: SmallFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "--format", "markdown")

    assert code == 0
    lines = out.splitlines()
    assert "## us-east-1" in lines
    header = "| " + " | ".join(MARKDOWN_COLUMNS) + " |"
    assert header in lines
    assert lines[lines.index(header) + 1] == "|---|---|---|---|---|---|"
    assert any(line.startswith(f"| instance | {fleet.blocked} | blocked | warning | 5 |") for line in lines)
    assert "## Summary" in lines


def test_audit_table_shows_the_path_the_findings_and_a_summary(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "audit")

    assert code == 0
    assert "us-east-1 (account 123456789012)" in out
    for step in ("instances: require IMDSv2", "launch templates", "account default", "guardrails (IAM/SCP)"):
        assert step in out
    assert fleet.blocked in out
    assert "2 required, 4 optional (1 ready, 1 blocked, 1 insufficient data, 1 exempt)" in out
    assert "guardrails: not ready for guardrails" in out


def test_audit_changes_nothing_even_when_the_environment_asks_for_every_change(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an environment in fix mode with every opt-in change switched on
    for name, value in EVERY_CHANGE.items():
        monkeypatch.setenv(name, value)
    before = snapshot(fleet)

    # When the audit runs
    code, out, _ = run(capsys, "audit", "--format", "json")

    # Then it reported in flag mode, and nothing changed: no instance enforced, no rollback of the rejecting one,
    # no account default, no new template version
    assert code == 0
    (report,) = json.loads(out)
    assert report["mode"] == "flag"
    assert "enforced" not in report["counts"]
    assert "rolled_back" not in report["counts"]
    assert snapshot(fleet) == before
    assert metadata_options(fleet.rejecting)["HttpTokens"] == "required"


def test_audit_of_a_clean_region_says_ready_for_guardrails(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    # Given only IMDSv2 instances and an account default that requires IMDSv2
    launch(tokens="required", count=2)
    boto3.client("ec2").modify_instance_metadata_defaults(HttpTokens="required")

    code, out, _ = run(capsys, "audit", "--format", "json", "--fail-on", "warning")

    (report,) = json.loads(out)
    assert code == 0
    assert report["findings"] == []
    assert report["totals"]["instances_required"] == 2
    assert report["totals"]["account_default_required"] == 1
    assert report["transition"]["guardrails"]["readiness"] == Readiness.READY.value


def test_fail_on_gives_exit_1_only_at_or_above_the_threshold(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fleet has warnings (blocked, flagged) and one high (rejected)
    assert run(capsys, "audit", "--format", "csv", "--fail-on", "high")[0] == 1
    assert run(capsys, "audit", "--format", "csv", "--fail-on", "warning")[0] == 1
    assert run(capsys, "audit", "--format", "csv")[0] == 0


def enabled_regions_response(*regions: str) -> AWSResponse:
    """DescribeRegions as AWS answers an account with only these regions enabled (moto lists every region)."""
    items = "".join(
        f"<item><regionName>{region}</regionName><regionEndpoint>ec2.{region}.amazonaws.com</regionEndpoint>"
        "<optInStatus>opt-in-not-required</optInStatus></item>"
        for region in regions
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><DescribeRegionsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>00000000-0000-0000-0000-000000000000</requestId><regionInfo>{items}</regionInfo>"
        "</DescribeRegionsResponse>"
    ).encode()
    return AWSResponse("https://ec2.amazonaws.com/", 200, {"Content-Type": "text/xml"}, _Body(body))


def test_audit_all_regions_covers_every_enabled_region(
    aws: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account with two enabled regions, and an optional instance in each
    launch()
    boto3.client("ec2", region_name="eu-west-1").run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, MetadataOptions={"HttpTokens": "optional"}
    )
    session = boto3.session.Session()
    session.events.register_first(
        "before-send.ec2.DescribeRegions", Fault(enabled_regions_response("eu-west-1", "us-east-1"))
    )
    monkeypatch.setattr(cli_aws, "new_session", lambda: session)

    # When the audit covers all regions
    code, out, _ = run(capsys, "audit", "--all-regions", "--format", "json")

    # Then there is one report per enabled region, each with its own instance
    assert code == 0
    reports = {report["region"]: report for report in json.loads(out)}
    assert set(reports) == {"eu-west-1", "us-east-1"}
    assert reports["us-east-1"]["counts"]["insufficient_data"] == 1
    assert reports["eu-west-1"]["counts"]["insufficient_data"] == 1
    # And the caller's environment is as it was (the CLI points the product's clients at each region in turn)
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "AWS_ENDPOINT_URL" not in os.environ


def test_run_audit_and_render_table_are_callable_without_the_command_line(fleet: SmallFleet) -> None:
    # The demo's entry points: a result object and a renderer onto any console
    result = run_audit(regions=["us-east-1"])
    buffer = io.StringIO()
    render_table(result, Console(file=buffer, width=160))
    assert result.account == ACCOUNT
    assert result.regions[0].instances_required == 2
    assert result.guardrail_hint.readiness is Readiness.NOT_READY
    assert fleet.ready in buffer.getvalue()


# enforce


def test_enforce_dry_run_reports_and_changes_nothing(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLBACK_ON_REJECTED", "true")  # a dry run must not roll back either
    before = snapshot(fleet)

    code, out, _ = run(capsys, "enforce", "--dry-run", "--format", "json")

    assert code == 0
    (report,) = json.loads(out)
    assert_valid_report(report)
    assert report["trigger"] == "gate"
    assert report["mode"] == "flag"
    assert actions(report)[fleet.ready] == "ready"
    assert actions(report)[fleet.rejecting] == "rejected"
    assert snapshot(fleet) == before


def test_enforce_apply_yes_enforces_only_the_ready_instance(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "enforce", "--apply", "--yes", "--format", "json")

    assert code == 0
    (report,) = json.loads(out)
    assert_valid_report(report)
    assert report["mode"] == "fix"
    assert actions(report)[fleet.ready] == "enforced"
    assert metadata_options(fleet.ready)["HttpTokens"] == "required"
    assert tags_of(fleet.ready)[ENFORCED_BY_TAG] == "usage_gate"
    for untouched in (fleet.blocked, fleet.no_data, fleet.exempt):
        assert metadata_options(untouched)["HttpTokens"] == "optional"


@pytest.mark.usefixtures("retry_delays")
def test_enforce_apply_that_hits_an_unexpected_error_still_prints_what_it_did(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given EC2 failing the ready instance's modify on every retry (the fault sits on the product's cached client for
    # the paced modifies)
    inject(
        clients.ec2_paced(),
        "ModifyInstanceMetadataOptions",
        Fault(ec2_error("InternalError", status=500), only_for=fleet.ready),
    )
    monkeypatch.setattr(clients, "reset_clients", lambda: None)

    # When the sweep is applied
    code, out, err = run(capsys, "enforce", "--apply", "--yes", "--format", "json")

    # Then the report of the whole sweep is on stdout, and the failure is one line with exit code 3
    assert code == 3
    (report,) = json.loads(out)
    assert_valid_report(report)
    assert actions(report)[fleet.ready] == "failed"
    assert actions(report)[fleet.blocked] == "blocked"
    # (the service's own error log line goes to stderr too, above the CLI's one-line verdict)
    assert err.strip().splitlines()[-1].startswith("imds-enforcer: AWS calls failed during the sweep")
    assert "Traceback" not in err


def test_enforce_apply_without_yes_and_without_a_terminal_changes_nothing(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "enforce", "--apply")

    assert code == 2
    assert out == ""
    assert err.strip() == "imds-enforcer: --apply changes instances: confirm it in a terminal, or pass --yes"
    assert metadata_options(fleet.ready)["HttpTokens"] == "optional"


@pytest.mark.parametrize("argv", [["enforce"], ["enforce", "--dry-run", "--apply"], ["audit", "--lookback-days", "0"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "error:" in err


# guardrails


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # By default the service's roles are protected for service-managed StackSets' execution roles
        (["--format", "scp"], scp_document(deployment_role_arns=["arn:aws:iam::*:role/stacksets-exec-*"])),
        (["--format", "iam"], iam_policy_document(deployment_role_arns=["arn:aws:iam::*:role/stacksets-exec-*"])),
        (
            ["--format", "scp", "--deployment-role", "arn:aws:iam::*:role/cdk-hnb659fds-cfn-exec-role-*"],
            scp_document(deployment_role_arns=["arn:aws:iam::*:role/cdk-hnb659fds-cfn-exec-role-*"]),
        ),
        (
            [
                "--format",
                "scp",
                "--max-hop-limit",
                "3",
                "--break-glass-role",
                "arn:aws:iam::*:role/BreakGlass",
                "--no-role-delivery",
            ],
            scp_document(
                max_hop_limit=3,
                exempt_principal_arns=["arn:aws:iam::*:role/BreakGlass"],
                include_role_delivery=False,
                deployment_role_arns=["arn:aws:iam::*:role/stacksets-exec-*"],
            ),
        ),
    ],
)
def test_guardrails_prints_the_policy_document(
    argv: list[str], expected: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "guardrails", *argv)
    assert code == 0, err
    assert json.loads(out) == expected
    assert out.startswith("{\n  ")  # pretty


def test_guardrails_bad_role_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "guardrails", "--format", "iam", "--break-glass-role", "not-an-arn")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "not-an-arn" in err


# errors: one line on stderr, no traceback


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    # Nor an instance role or a container role: the lookups would otherwise wait on their endpoints.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_credentials")
def test_no_credentials_is_exit_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit")
    assert code == 3
    assert out == ""
    assert one_line(err).startswith("imds-enforcer: no AWS credentials found")


def test_unknown_region_is_a_usage_error_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "--region", "us-east-1", "--region", "moon-south-1")
    assert code == 2
    assert out == ""
    assert "unknown region 'moon-south-1'" in one_line(err)


def test_access_denied_names_the_operation(
    fleet: SmallFleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a caller that may not DescribeInstances. The fault sits on the product's cached EC2 client, so the CLI
    # must keep that client: it is already built for this region and endpoint, which is all the reset is for.
    inject(clients.ec2(), "DescribeInstances", Fault(ec2_error("UnauthorizedOperation", "You are not authorized")))
    monkeypatch.setattr(clients, "reset_clients", lambda: None)

    code, out, err = run(capsys, "audit", "--format", "json")

    assert code == 3
    assert out == ""
    line = one_line(err)
    assert "access denied" in line
    assert "ec2:DescribeInstances" in line
    assert "UnauthorizedOperation" in line
    assert "region us-east-1" in line


def test_unreachable_endpoint_is_exit_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on the loopback: nothing listens, the connection is refused at once.
    code, out, err = run(capsys, "audit", "--endpoint-url", "http://127.0.0.1:9")
    assert code == 3
    assert out == ""
    assert "cannot reach the AWS endpoint http://127.0.0.1:9" in one_line(err)


# the installed console script


def installed_script() -> str | None:
    local = ROOT / ".venv" / "bin" / "imds-enforcer"
    return shutil.which("imds-enforcer") or (str(local) if local.exists() else None)


def test_console_script_prints_the_scp() -> None:
    script = installed_script()
    if script is None:
        pytest.skip("the imds-enforcer console script is not installed: run `make setup` (pip install -e .)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    done = subprocess.run(
        [script, "guardrails", "--format", "scp"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == scp_document(deployment_role_arns=["arn:aws:iam::*:role/stacksets-exec-*"])


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imds_enforcer_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), str(ROOT)])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "exit codes:" in done.stdout

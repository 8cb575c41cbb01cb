"""`imds-enforcer audit --org` against an organization in moto: five accounts, two regions, real boto3 calls.

moto keeps one backend per account; the audit reaches each member through sts:AssumeRole, as on AWS. The emulator
teaches AssumeRole to refuse a role that does not exist (the `legacy` account never got the StackSet's role), and
these tests teach moto two more refusals, each in one account: GetInstanceMetadataDefaults denied (`sandbox`,
us-east-1) and a region the account has not enabled (`sandbox`, eu-west-1).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from moto.ec2.responses import EC2Response
from moto.ec2.responses.instances import InstanceResponse

from emulator import ACCOUNT
from emulator.fleet import backdate_launch
from emulator.organization import Organization, create_organization, member_session
from imds_enforcer.domain.organization import AUDIT_READ_ACTIONS
from imds_enforcer_cli.main import main
from imds_enforcer_cli.org_audit import Status, Step, run_org_audit
from imds_enforcer_cli.org_render import ROLLUP_COLUMNS
from tests.support.metrics import put_daily
from tests.support.schema import assert_valid_report

REGIONS = ("us-east-1", "eu-west-1")
CLEAN = [0.0] * 14
IMAGE = "ami-12c6146b"


@dataclass(frozen=True)
class OrgFleet:
    org: Organization
    payments: str  # Prod: ready + blocked + required + an open launch template in us-east-1; no data in eu-west-1
    web: str  # Prod/Web (nested): required + exempt, account default required in both regions
    sandbox: str  # Sandbox: one instance without data; metadata defaults denied (us), region not enabled (eu)
    legacy: str  # Sandbox: the StackSet never reached it (no audit role)
    ready: str
    blocked: str

    @property
    def prod(self) -> str:
        return self.org.units["Prod"]


def _launch(ec2: Any, *, tokens: str = "optional", count: int = 1, tags: dict[str, str] | None = None) -> list[str]:
    kwargs: dict[str, Any] = {
        "ImageId": IMAGE,
        "MinCount": count,
        "MaxCount": count,
        "MetadataOptions": {"HttpTokens": tokens},
    }
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": key, "Value": value} for key, value in tags.items()]}
        ]
    return [item["InstanceId"] for item in ec2.run_instances(**kwargs)["Instances"]]


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Accounts for which moto answers like an account with a narrower policy or fewer regions (filled in below)."""
    refused: dict[str, str] = {}
    original_defaults = EC2Response.get_instance_metadata_defaults  # taught by emulator.moto_ext
    original_describe = InstanceResponse.describe_instances

    def defaults(self: EC2Response) -> Any:
        if refused.get("defaults") == self.current_account and self.region == "us-east-1":
            raise EC2ClientError("UnauthorizedOperation", "You are not authorized to perform this operation.")
        return original_defaults(self)

    def describe(self: InstanceResponse) -> Any:
        if refused.get("region") == self.current_account and self.region == "eu-west-1":
            raise EC2ClientError("AuthFailure", "AWS was not able to validate the provided access credentials")
        return original_describe(self)

    monkeypatch.setattr(EC2Response, "get_instance_metadata_defaults", defaults)
    monkeypatch.setattr(InstanceResponse, "describe_instances", describe)
    return refused


@pytest.fixture
def fleet(aws: None, refusals: dict[str, str]) -> OrgFleet:
    org = create_organization()
    org.add_unit("Prod")
    org.add_unit("Web", parent="Prod")
    org.add_unit("Sandbox")
    clients: dict[tuple[str, str], Any] = {}

    def ec2(account: str, region: str) -> Any:
        if (account, region) not in clients:
            clients[account, region] = member_session(account, region).client("ec2")
        return clients[account, region]

    payments = org.add_member("payments", unit="Prod").account_id
    web = org.add_member("web", unit="Web").account_id
    sandbox = org.add_member("sandbox", unit="Sandbox").account_id
    legacy = org.add_member("legacy", unit="Sandbox", audit_role=False).account_id

    # payments, us-east-1: one instance ready for IMDSv2, one still calling IMDSv1, one done, an open template
    (ready,) = _launch(ec2(payments, "us-east-1"))
    (blocked,) = _launch(ec2(payments, "us-east-1"))
    _launch(ec2(payments, "us-east-1"), tokens="required")
    backdate_launch([ready, blocked], 30, account=payments, region="us-east-1")
    cloudwatch = member_session(payments, "us-east-1").client("cloudwatch")
    put_daily(ready, CLEAN, cloudwatch=cloudwatch)
    put_daily(blocked, [0.0, 5.0, *CLEAN[2:]], cloudwatch=cloudwatch)
    ec2(payments, "us-east-1").create_launch_template(
        LaunchTemplateName="legacy-web",
        LaunchTemplateData={"ImageId": IMAGE, "MetadataOptions": {"HttpTokens": "optional"}},
    )
    # payments, eu-west-1: one without any metric data, one done
    _launch(ec2(payments, "eu-west-1"))
    _launch(ec2(payments, "eu-west-1"), tokens="required")
    # web: done but for an exempt appliance; the account default requires IMDSv2 everywhere
    _launch(ec2(web, "us-east-1"), tokens="required", count=2)
    _launch(ec2(web, "us-east-1"), tags={"imdsv2-exempt": "vendor appliance"})
    for region in REGIONS:
        ec2(web, region).modify_instance_metadata_defaults(HttpTokens="required")
    # sandbox: one instance without data; the role may not read the account default; eu-west-1 is not enabled
    _launch(ec2(sandbox, "us-east-1"))
    refusals["defaults"] = sandbox
    refusals["region"] = sandbox
    return OrgFleet(org=org, payments=payments, web=web, sandbox=sandbox, legacy=legacy, ready=ready, blocked=blocked)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def regions_args() -> list[str]:
    return [arg for region in REGIONS for arg in ("--region", region)]


def rows_by_key(out: str) -> dict[tuple[str, str], dict[str, str]]:
    return {(row["name"], row["region"]): row for row in csv.DictReader(io.StringIO(out))}


# --- the whole organization -------------------------------------------------------------------------------------


def test_org_audit_has_a_row_per_account_region_and_one_for_the_unreadable_account(
    fleet: OrgFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the management account audits the whole organization in two regions
    code, out, err = run(capsys, "audit", "--org", *regions_args(), "--format", "csv")

    # Then every account-region is a row, with what was found there
    rows = rows_by_key(out)
    assert out.splitlines()[0] == ",".join(ROLLUP_COLUMNS)
    assert set(rows) == {
        ("master", "us-east-1"),
        ("master", "eu-west-1"),
        ("payments", "us-east-1"),
        ("payments", "eu-west-1"),
        ("web", "us-east-1"),
        ("web", "eu-west-1"),
        ("sandbox", "us-east-1"),
        ("sandbox", "eu-west-1"),
        ("legacy", "us-east-1 eu-west-1"),  # the account that cannot be entered: one row, saying why
    }

    def numbers(row: dict[str, str]) -> tuple[str, ...]:
        keys = ("required", "optional", "ready", "blocked", "insufficient_data", "exempt", "launch_sources_open")
        return tuple(row[key] for key in keys)

    payments_us = rows[("payments", "us-east-1")]
    assert payments_us["status"] == "audited"
    assert numbers(payments_us) == ("1", "2", "1", "1", "0", "0", "1")
    assert payments_us["ou"] == f"Prod ({fleet.prod})"
    assert payments_us["account_default"] == "no-preference"
    assert payments_us["guardrails"] == "not_ready"
    assert numbers(rows[("payments", "eu-west-1")]) == ("1", "1", "0", "0", "1", "0", "0")
    web_us = rows[("web", "us-east-1")]
    assert numbers(web_us) == ("2", "1", "0", "0", "0", "1", "0")
    assert web_us["ou"] == f"Web ({fleet.org.units['Web']})"  # found through Prod, recursively
    assert (web_us["account_default"], web_us["guardrails"]) == ("required", "ready_except_exempt")
    assert (rows[("web", "eu-west-1")]["account_default"], rows[("web", "eu-west-1")]["guardrails"]) == (
        "required",
        "ready",
    )
    # The management account is read with the caller's own credentials (StackSets never deploy there)
    assert rows[("master", "us-east-1")]["account"] == ACCOUNT
    assert rows[("master", "us-east-1")]["status"] == "audited"

    # And a step that fails inside an account is unknown for that step only: the rest is there
    sandbox_us = rows[("sandbox", "us-east-1")]
    assert sandbox_us["status"] == "partial"
    assert numbers(sandbox_us) == ("0", "1", "0", "0", "1", "0", "0")
    assert sandbox_us["account_default"] == "unknown"
    assert "account default: unknown" in sandbox_us["note"]
    # A region the account has not enabled is that one account-region, unreadable
    sandbox_eu = rows[("sandbox", "eu-west-1")]
    assert sandbox_eu["status"] == "unreadable"
    assert "region eu-west-1 is not enabled for this account (AuthFailure)" in sandbox_eu["note"]
    assert numbers(sandbox_eu) == ("",) * 7  # unknown is never 0
    # The account without the role is one row saying so
    legacy = rows[("legacy", "us-east-1 eu-west-1")]
    assert legacy["status"] == "unreadable"
    assert f"cannot assume arn:aws:iam::{fleet.legacy}:role/imds-enforcer-audit: AccessDenied" in legacy["note"]

    # And the exit code says the picture is incomplete (3, as for an AWS error), after printing everything
    assert code == 3
    assert err.strip().splitlines()[-1] == (
        "imds-enforcer: incomplete audit: 1 account(s) could not be entered "
        f"({fleet.legacy}), 2 account-region(s) not fully read; the rows say why"
    )


def test_org_totals_add_up_what_was_read_and_count_what_was_not(
    fleet: OrgFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "audit", "--org", *regions_args(), "--format", "markdown")

    assert code == 3
    total = next(line for line in out.splitlines() if line.startswith("| **5 accounts**"))
    cells = [cell.strip() for cell in total.strip("|").split("|")]
    assert dict(zip(ROLLUP_COLUMNS, cells, strict=True)) == {
        "account": "**5 accounts**",
        "name": "",
        "ou": "",
        "region": "**2 regions**",
        "status": "**6 audited, 1 partial, 1 unreadable, 1 unreadable accounts**",
        # Sums of what was read; the two rows that could not be read (sandbox eu-west-1, legacy) are counted apart
        "required": "**4 (+2 ?)**",
        "optional": "**5 (+2 ?)**",
        "ready": "**1 (+2 ?)**",
        "blocked": "**1 (+2 ?)**",
        "insufficient_data": "**2 (+2 ?)**",
        "exempt": "**1 (+2 ?)**",
        "launch_sources_open": "**1 (+2 ?)**",
        "account_default": "**2/7 required**",
        "guardrails": "**3/7 ready**",
        "note": "",
    }
    assert "- guardrails: 3 of 7 account-regions ready, 1 ready except exempt instances" in out.splitlines()


def test_org_json_is_one_valid_report_per_account_region(fleet: OrgFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "--org", *regions_args(), "--format", "json")

    assert code == 3
    reports = json.loads(out)
    for report in reports:
        assert_valid_report(report)
        assert report["trigger"] == "audit"
        assert report["mode"] == "flag"
    by_key = {(report["account_name"], report["region"]): report for report in reports}
    # 5 accounts x 2 regions: the unreadable account too, one report per region it should have had
    assert len(reports) == 10
    assert set(by_key) == {
        (name, region) for name in ("master", "payments", "web", "sandbox", "legacy") for region in REGIONS
    }
    payments = by_key[("payments", "us-east-1")]
    assert payments["account"] == fleet.payments
    assert payments["organizational_unit"] == fleet.prod
    found = {finding["resource_id"]: finding["action"] for finding in payments["findings"]}
    assert found[fleet.ready] == "ready"
    assert found[fleet.blocked] == "blocked"
    assert payments["totals"]["instances_required"] == 1
    assert payments["audit_status"] == {"status": "audited", "unknown_steps": [], "problem": ""}
    # Every failure is a `failed` finding with its error code, where it happened
    (legacy,) = by_key[("legacy", "us-east-1")]["findings"]
    assert (legacy["action"], legacy["error_code"], legacy["resource_type"]) == ("failed", "AccessDenied", "account")
    sandbox = by_key[("sandbox", "us-east-1")]
    assert sandbox["audit_status"]["unknown_steps"] == [Step.ACCOUNT_DEFAULT.value]
    denied = [finding for finding in sandbox["findings"] if finding["action"] == "failed"]
    assert [(finding["error_code"], finding["resource_id"]) for finding in denied] == [
        ("UnauthorizedOperation", fleet.sandbox)
    ]
    assert "GetInstanceMetadataDefaults failed" in denied[0]["reason"]
    assert by_key[("sandbox", "eu-west-1")]["findings"][0]["error_code"] == "AuthFailure"


def test_org_table_shows_the_rollup_and_the_summary(fleet: OrgFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "--org", *regions_args())

    assert code == 3
    for name in ("payments", "web", "sandbox", "legacy", "master", "unreadable", "partial", "not ready", "exempt left"):
        assert name in out
    assert "organization audit (read only) from account 123456789012: 5 accounts" in out
    assert "incomplete: 1 account(s) could not be entered, 1 account-region(s) could not be read, 1 partly read" in out


# --- by OU, exit codes, bad input -------------------------------------------------------------------------------


def test_an_ou_is_audited_recursively_and_a_complete_audit_exits_0_or_1_on_findings(
    fleet: OrgFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given only the Prod OU (web sits in Prod/Web); When audited
    code, out, err = run(capsys, "audit", "--org", "--ou", fleet.prod, *regions_args(), "--format", "csv")

    # Then both of its accounts are there, and nothing else; everything could be read
    assert code == 0, err
    assert {name for name, _ in rows_by_key(out)} == {"payments", "web"}
    # And --fail-on gives 1 when a finding is that severe (payments has a blocked instance: a warning)
    assert run(capsys, "audit", "--org", "--ou", fleet.prod, *regions_args(), "--fail-on", "warning")[0] == 1
    assert run(capsys, "audit", "--org", "--ou", fleet.prod, *regions_args(), "--fail-on", "high")[0] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--org", "--ou", "ou-nope"], "--ou 'ou-nope': not an OU id (ou-xxxx-xxxxxxxx) or a root id (r-xxxx)"),
        (
            ["--org", "--role-name", "has spaces"],
            "--role-name 'has spaces' is not an IAM role name (1-64 of letters, digits, +=,.@_-)",
        ),
        (["--org", "--max-workers", "0"], "--max-workers 0: must be 1..64"),
        (["--role-name", "x"], "--role-name: only with --org"),
        (["--ou", "r-ab12"], "--ou: only with --org"),
    ],
)
def test_bad_org_arguments_are_usage_errors_before_any_call(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No moto here: a call to AWS would fail differently (and slowly)
    code, out, err = run(capsys, "audit", *argv, "--endpoint-url", "http://127.0.0.1:9")

    assert code == 2
    assert out == ""
    assert err.strip() == f"imds-enforcer: {message}"


def test_an_ou_that_is_not_in_the_organization_is_a_usage_error(
    fleet: OrgFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "--org", "--ou", "ou-abcd-12345678")

    assert code == 2
    assert out == ""
    assert err.strip() == "imds-enforcer: --ou ou-abcd-12345678: no such OU in this organization"


def test_an_account_outside_any_organization_is_one_line_exit_3(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "--org")

    assert code == 3
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("imds-enforcer: AWS error AWSOrganizationsNotInUseException in ListRoots")


# --- parallel, and exactly the permissions it needs ---------------------------------------------------------------


@pytest.fixture
def two_enabled_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    """DescribeRegions as an account with only two regions enabled answers it (moto lists every region)."""
    original = RegionsAndZonesBackend.describe_regions

    def describe_regions(self: RegionsAndZonesBackend, region_names: list[str] | None = None) -> Any:
        return [region for region in original(self, region_names) if region.name in REGIONS]

    monkeypatch.setattr(RegionsAndZonesBackend, "describe_regions", describe_regions)


def test_a_parallel_audit_equals_a_serial_one(fleet: OrgFleet) -> None:
    parallel = run_org_audit(regions=REGIONS, max_workers=8)
    serial = run_org_audit(regions=REGIONS, max_workers=1)

    def picture(result: Any) -> list[tuple[Any, ...]]:
        # Everything but the wall time each sweep took (the gate's `sweep_seconds`), which no two runs share.
        return [
            (
                item.account.id,
                item.region,
                item.status,
                item.unknown,
                item.report.counts,
                {name: value for name, value in item.report.totals.items() if name != "sweep_seconds"},
            )
            for item in result.results
        ] + [(item.account.id, item.regions, item.reason) for item in result.unreadable]

    assert picture(parallel) == picture(serial)
    assert [item.status for item in parallel.results].count(Status.AUDITED) == 6


@pytest.mark.usefixtures("two_enabled_regions")
def test_the_audit_role_allows_exactly_what_the_audit_calls(fleet: OrgFleet) -> None:
    # Given a recorder of every API call made inside the member accounts (the management account's own calls,
    # Organizations and AssumeRole, are made with the caller's credentials, not the role's)
    called: set[str] = set()

    def record(session: Any, account: str, region: str) -> None:
        def on_call(model: Any, **_: Any) -> None:
            called.add(f"{model.service_model.service_name}:{model.name}")

        if account != ACCOUNT:
            session.events.register("provide-client-params.*.*", on_call)

    # When every member account is audited in all its enabled regions (a launch template, AMIs, Auto Scaling...)
    result = run_org_audit(all_regions=True, on_session=record, ou_ids=[fleet.prod])

    # Then the member role's policy (declared once, deployed by the StackSet) is exactly what was called
    assert result.complete
    assert {item.region for item in result.results} == set(REGIONS)
    # (botocore names EMR `emr`; IAM's prefix is `elasticmapreduce`)
    as_iam = {action.replace("emr:", "elasticmapreduce:", 1) for action in called}
    assert as_iam <= set(AUDIT_READ_ACTIONS)
    # And what the role allows beyond it is only what reads one resource of a kind this fleet has none of (a
    # notebook, a node group, a cluster, a Beanstalk environment's options), or a caller analysis' results
    assert set(AUDIT_READ_ACTIONS) - as_iam == {
        "sagemaker:DescribeNotebookInstance",
        "sagemaker:ListTags",
        "lightsail:GetInstance",
        "elasticbeanstalk:DescribeConfigurationSettings",
        "eks:ListNodegroups",
        "eks:DescribeNodegroup",
        "elasticmapreduce:DescribeCluster",
        "elasticmapreduce:DescribeSecurityConfiguration",
        "ssm:DescribeInstanceInformation",
        "ssm:GetCommandInvocation",
    }


@pytest.mark.usefixtures("two_enabled_regions")
def test_all_regions_are_each_accounts_own_and_an_unreadable_account_has_no_region_to_name(
    fleet: OrgFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "audit", "--org", "--all-regions", "--format", "json")

    assert code == 3
    regions = {(report["account_name"], report["region"]) for report in json.loads(out)}
    # Each readable account in the two regions it has enabled; the account that cannot be entered once, region "*"
    assert ("legacy", "*") in regions
    assert {region for name, region in regions if name == "payments"} == set(REGIONS)
    assert len(regions) == 4 * len(REGIONS) + 1

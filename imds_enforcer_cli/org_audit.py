"""`imds-enforcer audit --org`: every account of the organization (or of some OUs), every region, in parallel.

For each account the audit assumes the read-only role the StackSet deploys (once per account), then audits each of
its regions in a worker thread with the same steps as the single-account audit (`imds_enforcer_cli.audit`), the
product's adapters pointed at that account-region by `clients.session_scope`. Nothing is changed anywhere: the
settings are the audit's (flag mode, every opt-in change off).

Failures stay where they happen:
- an account that cannot be entered (role missing, access denied, suspended) is one `UnreadableAccount`;
- a region the account has not enabled is one unreadable account-region;
- inside an account-region, a step that fails (e.g. GetInstanceMetadataDefaults denied) is unknown for that step
  and a `failed` finding in its report; the other steps are still audited.
None of these stops the other accounts. `OrgAuditResult.complete` says whether everything could be read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from imds_enforcer.aws import clients, ec2
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.organization import (
    AUDIT_DEFAULT_WORKERS,
    AUDIT_MAX_WORKERS,
    AUDIT_ROLE_NAME,
    ROLE_NAME,
    is_ou_or_root,
)
from imds_enforcer.domain.report import SEVERITY, SEVERITY_RANK, Action, Finding, Report, Severity, sort_findings
from imds_enforcer.domain.settings import Settings
from imds_enforcer.workflows import launch_source_sweep
from imds_enforcer.workflows.usage_gate import SOURCE_CHECKS, run_gate
from imds_enforcer_cli import aws, organization
from imds_enforcer_cli.audit import (
    ACCOUNT_RESOURCE,
    AUDIT_TRIGGER,
    SOURCE_KINDS,
    AccountDefault,
    RegionAudit,
    StepHook,
    audit_settings,
    read_account_default,
)
from imds_enforcer_cli.errors import CliError, ExitCode
from imds_enforcer_cli.organization import Credentials, OrgAccount, RoleCredentials

ALL_REGIONS = "*"  # the region of an unreadable account's report when its regions could not be listed
# What a region the account has not enabled (opt-in regions) answers to every call.
REGION_DISABLED_CODES = frozenset({"AuthFailure", "OptInRequired", "UnrecognizedClientException"})
LAUNCH_SOURCE_KINDS = (*SOURCE_KINDS, launch_source_sweep.AUTO_SCALING_GROUP)

SessionHook = Callable[[boto3.session.Session, str, str], None]
"""Called with each account-region's new session, its account and region (the benchmark counts calls with it)."""


class Step(StrEnum):
    """The steps of an account-region's audit that can fail on their own."""

    INSTANCES = "instances"
    REQUIRED = "instances requiring IMDSv2"
    SOURCES = "launch sources"
    ACCOUNT_DEFAULT = "account default"


class Status(StrEnum):
    AUDITED = "audited"  # every step answered
    PARTIAL = "partial"  # some steps unknown; the rest is there
    UNREADABLE = "unreadable"  # nothing could be read


@dataclass(frozen=True)
class AccountRegionResult:
    account: OrgAccount
    region: str
    status: Status
    audit: RegionAudit  # its report holds a `failed` finding for each call that failed
    unknown: tuple[Step, ...] = ()
    problem: str = ""

    @property
    def report(self) -> Report:
        return self.audit.report

    def instance_count(self, action: Action) -> int | None:
        return (
            None
            if Step.INSTANCES in self.unknown or self.status is Status.UNREADABLE
            else self.audit.instance_counts()[action]
        )

    @property
    def instances_optional(self) -> int | None:
        if Step.INSTANCES in self.unknown or self.status is Status.UNREADABLE:
            return None
        return self.report.totals.get("instances_optional", 0)

    @property
    def launch_sources_open(self) -> int | None:
        """Launch templates, launch configurations and AMIs that still allow IMDSv1 (not exempt)."""
        if Step.SOURCES in self.unknown or self.status is Status.UNREADABLE:
            return None
        return sum(
            1
            for finding in self.report.findings
            if finding.resource_type in SOURCE_KINDS and finding.action not in (Action.EXEMPT, Action.FAILED)
        )

    @property
    def account_default(self) -> str:
        """required / optional / no-preference, `n/a` where the API is not offered, `unknown` where it failed."""
        default = self.audit.account_default
        if Step.ACCOUNT_DEFAULT in self.unknown or self.status is Status.UNREADABLE or default is None:
            return "unknown"
        return default.http_tokens or "n/a"

    @property
    def guardrails(self) -> str:
        """The guardrail readiness, or `unknown` while the instances or launch sources are (it depends on both)."""
        if self.status is Status.UNREADABLE or {Step.INSTANCES, Step.SOURCES} & set(self.unknown):
            return "unknown"
        return self.audit.guardrail_hint.readiness.value


@dataclass(frozen=True)
class UnreadableAccount:
    """An account the audit could not enter: one row, and one report per region that should have been audited."""

    account: OrgAccount
    regions: tuple[str, ...]  # empty with --all-regions: the account's regions could not be listed
    reason: str
    error_code: str

    def reports(self, *, generated_at: datetime) -> list[Report]:
        finding = Finding(
            resource_type=ACCOUNT_RESOURCE,
            resource_id=self.account.id,
            action=Action.FAILED,
            reason=self.reason,
            error_code=self.error_code,
        )
        return [
            Report(
                account=self.account.id,
                account_name=self.account.name or None,
                organizational_unit=self.account.ou_id,
                region=region,
                trigger=AUDIT_TRIGGER,
                mode="flag",
                generated_at=generated_at,
                findings=[finding],
            )
            for region in self.regions or (ALL_REGIONS,)
        ]


@dataclass(frozen=True)
class OrgAuditResult:
    caller_account: str
    accounts: list[OrgAccount]
    results: list[AccountRegionResult]  # sorted by account name, id, region
    unreadable: list[UnreadableAccount]
    lookback_days: int
    role_name: str
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def complete(self) -> bool:
        """Every account entered, every account-region and every step read."""
        return not self.unreadable and all(result.status is Status.AUDITED for result in self.results)

    @property
    def reports(self) -> list[Report]:
        reports = [result.report for result in self.results]
        for account in self.unreadable:
            reports.extend(account.reports(generated_at=self.generated_at))
        return reports

    @property
    def findings(self) -> list[Finding]:
        return [finding for report in self.reports for finding in report.findings]

    def needs_action(self, threshold: Severity) -> bool:
        return any(SEVERITY_RANK[SEVERITY[finding.action]] >= SEVERITY_RANK[threshold] for finding in self.findings)

    def status_counts(self) -> Counter[str]:
        counted: Counter[str] = Counter(result.status.value for result in self.results)
        counted["unreadable accounts"] = len(self.unreadable)
        return counted


def check_org_arguments(*, role_name: str, ou_ids: Sequence[str], max_workers: int) -> None:
    """Bad input is a usage error before any AWS call."""
    if not ROLE_NAME.match(role_name):
        raise CliError(f"--role-name {role_name!r} is not an IAM role name (1-64 of letters, digits, +=,.@_-)")
    bad = [ou_id for ou_id in ou_ids if not is_ou_or_root(ou_id)]
    if bad:
        raise CliError(
            f"--ou {', '.join(map(repr, bad))}: not an OU id (ou-xxxx-xxxxxxxx) or a root id (r-xxxx)", ExitCode.USAGE
        )
    if not 1 <= max_workers <= AUDIT_MAX_WORKERS:
        raise CliError(f"--max-workers {max_workers}: must be 1..{AUDIT_MAX_WORKERS}", ExitCode.USAGE)


@dataclass
class _AccountAccess:
    account: OrgAccount
    credentials: Callable[[], Credentials | None]
    regions: tuple[str, ...]


def run_org_audit(
    *,
    role_name: str = AUDIT_ROLE_NAME,
    ou_ids: Sequence[str] = (),
    regions: Sequence[str] = (),
    all_regions: bool = False,
    lookback_days: int | None = None,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    session: boto3.session.Session | None = None,
    max_workers: int = AUDIT_DEFAULT_WORKERS,
    on_step: StepHook | None = None,
    on_session: SessionHook | None = None,
    now: datetime | None = None,
) -> OrgAuditResult:
    """Audit every account under `ou_ids` (default: the whole organization) in `regions` (default: the session's
    region; `all_regions`: each account's enabled regions), `max_workers` account-regions at a time.

    Raises CliError for bad arguments (before any call) and botocore's errors for what stops the whole audit (no
    credentials, Organizations not readable); everything that concerns one account or region is in the result.
    """
    check_org_arguments(role_name=role_name, ou_ids=ou_ids, max_workers=max_workers)
    settings = audit_settings(os.environ if environ is None else environ, lookback_days=lookback_days)
    session = session or aws.new_session()
    targets = [] if all_regions else aws.resolve_regions(session, regions=regions, endpoint_url=endpoint_url)
    home = aws.home_region(session) or (targets[0] if targets else aws.DEFAULT_HOME_REGION)
    caller, partition = aws.caller_identity(session, region=home, endpoint_url=endpoint_url)
    accounts = organization.list_accounts(session, ou_ids=ou_ids, endpoint_url=endpoint_url)
    # One STS client for every worker (clients are thread-safe); the regional endpoint of the home region.
    sts = session.client("sts", region_name=home, endpoint_url=endpoint_url, config=organization.ORGANIZATIONS_CONFIG)
    own = organization.caller_credentials(session)
    generated_at = now or datetime.now(UTC)

    def enter(account: OrgAccount) -> _AccountAccess | UnreadableAccount:
        wanted = tuple(targets)
        if not account.active:
            return UnreadableAccount(account, wanted, f"the account is {account.status}", account.status)
        role = RoleCredentials(sts, account=account.id, role_name=role_name, partition=partition)
        # The caller's own account with the caller's credentials: StackSets never deploy to the management account.
        fetch: Callable[[], Credentials | None] = (lambda: own) if account.id == caller else role.get
        try:
            credentials = fetch()
            if all_regions:
                # The account's own enabled regions (opt-in regions differ between accounts).
                regions_session = organization.session_for(credentials, home)
                if on_session is not None:
                    on_session(regions_session, account.id, home)
                listed = aws.resolve_regions(regions_session, all_regions=True, endpoint_url=endpoint_url)
                wanted = tuple(listed)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "Unknown"))
            message = " ".join(str(error.response.get("Error", {}).get("Message", "")).split())[:200]
            what = f"cannot assume {role.role_arn}" if error.operation_name == "AssumeRole" else error.operation_name
            return UnreadableAccount(account, wanted, f"{what}: {code} ({message})", code)
        except BotoCoreError as error:
            return UnreadableAccount(account, wanted, f"cannot reach AWS: {error}", type(error).__name__)
        return _AccountAccess(account, fetch, wanted)

    def audit(access: _AccountAccess, region: str) -> AccountRegionResult:
        region_session = organization.session_for(access.credentials(), region)
        if on_session is not None:
            on_session(region_session, access.account.id, region)
        with clients.session_scope(region_session, endpoint_url=endpoint_url):
            try:
                return audit_account_region(access.account, region, settings, now=now)
            except BotoCoreError as error:  # the adapters translate AWS's answers; this is the network's
                return _unreadable_region(access.account, region, f"cannot reach AWS: {error}", type(error).__name__)

    results: list[AccountRegionResult] = []
    unreadable: list[UnreadableAccount] = []
    entered = 0
    total = len(accounts) * max(1, len(targets))

    def progress(label: str) -> None:
        if on_step is not None:
            on_step(len(results) + sum(max(1, len(item.regions)) for item in unreadable), total, label)

    progress(f"entering {len(accounts)} accounts")
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="imds-audit") as pool:
        pending: dict[Future[Any], OrgAccount] = {pool.submit(enter, account): account for account in accounts}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                account = pending.pop(future)
                outcome = future.result()
                if isinstance(outcome, UnreadableAccount):
                    unreadable.append(outcome)
                    progress(f"{account.id}: cannot be read")
                elif isinstance(outcome, _AccountAccess):
                    entered += 1
                    if all_regions:
                        total += max(1, len(outcome.regions)) - max(1, len(targets))
                    for region in outcome.regions:
                        pending[pool.submit(audit, outcome, region)] = account
                else:
                    assert isinstance(outcome, AccountRegionResult)
                    results.append(outcome)
                    progress(f"{account.id} {outcome.region}: {outcome.status.value}")
    progress("done")
    results.sort(key=lambda item: (item.account.name.lower(), item.account.id, item.region))
    unreadable.sort(key=lambda item: (item.account.name.lower(), item.account.id))
    return OrgAuditResult(
        caller_account=caller,
        accounts=accounts,
        results=results,
        unreadable=unreadable,
        lookback_days=settings.LOOKBACK_DAYS,
        role_name=role_name,
        generated_at=generated_at,
    )


def _unreadable_region(account: OrgAccount, region: str, reason: str, code: str) -> AccountRegionResult:
    report = Report(
        account=account.id,
        account_name=account.name or None,
        organizational_unit=account.ou_id,
        region=region,
        trigger=AUDIT_TRIGGER,
        mode="flag",
        findings=[
            Finding(
                resource_type=ACCOUNT_RESOURCE,
                resource_id=account.id,
                action=Action.FAILED,
                reason=reason,
                error_code=code,
            )
        ],
    )
    return AccountRegionResult(
        account, region, Status.UNREADABLE, RegionAudit(region=region, report=report), problem=reason
    )


def audit_account_region(
    account: OrgAccount, region: str, settings: Settings, *, now: datetime | None = None
) -> AccountRegionResult:
    """The single-account audit's steps for one account-region, each allowed to fail on its own. Runs with the
    product's clients already pointed at the account-region (a `clients.session_scope`)."""
    unknown: list[Step] = []
    findings: list[Finding] = []
    totals: dict[str, int] = {}
    sources_checked: bool | None = True

    def failed(error: AwsError, step: Step) -> None:
        unknown.append(step)
        finding = error.finding(account.id, resource_type=ACCOUNT_RESOURCE)
        findings.append(finding.model_copy(update={"reason": f"{finding.reason}: {step.value} not audited"}))

    # 1. Instances and their IMDSv1 use, then the launch sources (the gate's sweep in flag mode, unpublished).
    try:
        outcome = run_gate({}, settings=settings, deployment=Deployment(account.id, region), now=now, publish=False)
        findings.extend(outcome.findings)
        totals.update(outcome.totals)
        sources_checked = not outcome.totals.get("source_checks_skipped", 0)
    except UnexpectedAwsError as error:
        # The instances were read; a launch-source listing failed unexpectedly (its failed finding is in the report).
        if error.report is None:
            raise  # the gate raises this only after building its report: anything else is a bug
        findings.extend(error.report.findings)
        totals.update(error.report.totals)
        unknown.append(Step.SOURCES)
    except AwsError as error:
        if error.code in REGION_DISABLED_CODES:
            return _unreadable_region(
                account, region, f"region {region} is not enabled for this account ({error.code})", error.code
            )
        failed(error, Step.INSTANCES)
        # The launch sources do not depend on the instances: check them on their own.
        sources = launch_source_sweep.SourceOutcome()
        for _, check in SOURCE_CHECKS:
            sources.extend(check(settings))
        findings.extend(sources.findings)
        if sources.unexpected_errors:
            unknown.append(Step.SOURCES)
    if Step.SOURCES not in unknown and any(
        finding.action is Action.FAILED and finding.resource_type in LAUNCH_SOURCE_KINDS for finding in findings
    ):
        unknown.append(Step.SOURCES)  # an expected failure (throttled after retries) still leaves a gap

    # 2. The instances that already require IMDSv2 (the same API: not asked again when it was just refused).
    required: int | None = None
    if Step.INSTANCES not in unknown:
        try:
            required = sum(1 for _ in ec2.iter_instances_by_tokens("required"))
        except AwsError as error:
            failed(error, Step.REQUIRED)

    # 3. The account default (not offered by every partition or emulator: then "n/a", not a failure).
    default: AccountDefault | None = None
    try:
        default, default_finding = read_account_default(account.id)
        if default_finding is not None:
            findings.append(default_finding)
    except AwsError as error:
        failed(error, Step.ACCOUNT_DEFAULT)

    totals["instances_optional"] = totals.get("instances_scanned", 0)
    if required is not None:
        totals["instances_required"] = required
    if default is not None:
        totals["account_default_required"] = int(default.requires_imdsv2)
    report = Report(
        account=account.id,
        account_name=account.name or None,
        organizational_unit=account.ou_id,
        region=region,
        trigger=AUDIT_TRIGGER,
        mode=settings.ENFORCEMENT_MODE.value,
        totals=totals,
        findings=sort_findings(findings),
    )
    audit = RegionAudit(
        region=region,
        report=report,
        instances_required=required,
        account_default=default,
        sources_checked=None if Step.SOURCES in unknown else sources_checked,
    )
    steps = tuple(dict.fromkeys(unknown))
    problem = "; ".join(f"{step.value}: unknown" for step in steps)
    return AccountRegionResult(account, region, Status.PARTIAL if steps else Status.AUDITED, audit, steps, problem)

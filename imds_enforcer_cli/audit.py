"""Where an account stands on AWS's IMDSv2 transition path, and one gate sweep from a workstation.

`run_audit` never changes anything: whatever the environment says, its settings are flag mode with every opt-in
change switched off (the gate's rollback and account default, the launch-source fixes). It runs, per region:
1. the usage gate in flag mode, unpublished: every optional instance is `ready`, `blocked`, `insufficient_data`
   or `exempt` (and enforced instances under watch that reject IMDSv1 calls are `rejected`);
2. a count of the instances that already require IMDSv2;
3. the launch sources (launch templates, launch configurations, AMIs), which the gate's sweep checks too
   in flag mode, when that module is installed;
4. the account default (GetInstanceMetadataDefaults);
and then derives the guardrail hint: whether the IAM/SCP documents of `imds-enforcer guardrails` can go on.

`run_enforce` is one sweep of the gate with the same rules as the Lambda (dry run = flag mode, apply = fix mode).
Both return an `AuditResult` that `imds_enforcer_cli.render` prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from imds_enforcer.aws import ec2
from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.doors import EC2_LAUNCHING_DOORS
from imds_enforcer.domain.report import SEVERITY, SEVERITY_RANK, Action, Finding, Report, Severity, sort_findings
from imds_enforcer.domain.settings import Settings
from imds_enforcer.workflows.usage_gate import run_gate
from imds_enforcer_cli import aws
from imds_enforcer_cli.doors_view import callers_step, door_steps

if TYPE_CHECKING:
    import boto3

AUDIT_TRIGGER = "audit"
ACCOUNT_RESOURCE = "account"
SOURCE_KINDS = ("launch_template", "launch_configuration", "image")
# What each region's audit does, in order: the progress bar counts these.
AUDIT_STEPS = (
    "instances, IMDSv1 use, launch templates, launch configurations, AMIs, other IMDS doors",
    "instances requiring IMDSv2",
    "account default",
)
# Settings no audit may take from the environment: each of them can change something.
AUDIT_OVERRIDES = {
    "ENFORCEMENT_MODE": "flag",
    "ROLLBACK_ON_REJECTED": "false",  # the gate's rollback is not gated on fix mode: it must be off here
    "SET_ACCOUNT_DEFAULT": "false",  # the audit reads the default itself, once, in every mode
    "FIX_LAUNCH_TEMPLATES": "false",
    "FIX_IMAGES": "false",
    "FIX_SAGEMAKER_NOTEBOOKS": "false",
    "FIX_LIGHTSAIL_INSTANCES": "false",
    # Reads the results of analyses the gate ran (GetCommandInvocation); never selects, tags or sends.
    "CALLER_ANALYSIS": "read",
}
# GetInstanceMetadataDefaults is newer than some partitions and emulators: "not available here", not a failure.
UNSUPPORTED_CODES = frozenset({"InvalidAction", "UnsupportedOperation", "NotImplemented", "UnknownOperationException"})
# Instance findings that mean "still accepts IMDSv1 and is not exempt".
OPEN_ACTIONS = frozenset({Action.READY, Action.BLOCKED, Action.INSUFFICIENT_DATA, Action.FLAGGED, Action.FAILED})

StepHook = Callable[[int, int, str], None]
"""Called before each step with (steps done, steps in all, what comes next): drives a progress bar."""


class Readiness(StrEnum):
    NOT_READY = "not_ready"
    READY_EXCEPT_EXEMPT = "ready_except_exempt"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class GuardrailHint:
    readiness: Readiness
    message: str


@dataclass(frozen=True, slots=True)
class AccountDefault:
    """The region's account-level IMDS default; `http_tokens` None when the API is not available there."""

    http_tokens: str | None
    managed_by: str = "account"
    note: str = ""

    @property
    def requires_imdsv2(self) -> bool:
        return self.http_tokens == "required"


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the transition path: `ok` (done), `action` (something to do), `info` or `skipped`."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class RegionAudit:
    region: str
    report: Report
    # None where the run did not look (an enforce sweep does not count required instances or read sources).
    instances_required: int | None = None
    account_default: AccountDefault | None = None
    sources_checked: bool | None = None  # None: not part of this run; False: skipped (the gate's time budget)

    def findings_of(self, resource_type: str) -> list[Finding]:
        return [finding for finding in self.report.findings if finding.resource_type == resource_type]

    def instance_counts(self) -> Counter[Action]:
        return Counter(finding.action for finding in self.findings_of("instance"))

    @property
    def guardrail_hint(self) -> GuardrailHint:
        return guardrail_hint(self)

    def steps(self) -> list[Step]:
        return transition_steps(self)


@dataclass(frozen=True)
class AuditResult:
    account: str
    regions: list[RegionAudit]
    lookback_days: int
    mode: str = "flag"
    command: str = "audit"
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def reports(self) -> list[Report]:
        return [region.report for region in self.regions]

    @property
    def findings(self) -> list[Finding]:
        return [finding for region in self.regions for finding in region.report.findings]

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(finding.action.value for finding in self.findings)
        return dict(sorted(counted.items()))

    @property
    def guardrail_hint(self) -> GuardrailHint:
        """The least ready region decides for the account (an SCP binds every region at once)."""
        hints = [region.guardrail_hint for region in self.regions]
        order = list(Readiness)
        worst = min(hints, key=lambda hint: order.index(hint.readiness), default=None)
        if worst is None:
            return GuardrailHint(Readiness.NOT_READY, "no region audited")
        if len(self.regions) > 1:
            where = [region.region for region in self.regions if region.guardrail_hint.readiness is worst.readiness]
            return GuardrailHint(worst.readiness, f"{worst.message} [{', '.join(where)}]")
        return worst

    def needs_action(self, threshold: Severity) -> bool:
        """Any finding at or above `threshold` (the `--fail-on` exit code)."""
        return any(SEVERITY_RANK[SEVERITY[finding.action]] >= SEVERITY_RANK[threshold] for finding in self.findings)


def audit_settings(environ: Mapping[str, str], *, lookback_days: int | None = None) -> Settings:
    """The environment's settings (exemption tag, coverage ratio, ...), with every change switched off."""
    values = {**environ, **AUDIT_OVERRIDES}
    if lookback_days is not None:
        values["LOOKBACK_DAYS"] = str(lookback_days)
    return Settings.from_env(values)


def enforce_settings(environ: Mapping[str, str], *, apply: bool, lookback_days: int | None = None) -> Settings:
    """The Lambda's rules from the environment; the mode is the command line's. A dry run changes nothing, so the
    gate's rollback (which does not look at the mode) is off for it."""
    values = dict(environ)
    values["ENFORCEMENT_MODE"] = "fix" if apply else "flag"
    if not apply:
        values["ROLLBACK_ON_REJECTED"] = "false"
        # Nor is the caller analysis: a dry run reads earlier results, and tags and sends nothing.
        if values.get("CALLER_ANALYSIS", "").strip() == "run":
            values["CALLER_ANALYSIS"] = "read"
    if lookback_days is not None:
        values["LOOKBACK_DAYS"] = str(lookback_days)
    return Settings.from_env(values)


def run_audit(
    *,
    regions: Sequence[str] = (),
    all_regions: bool = False,
    lookback_days: int | None = None,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    session: boto3.session.Session | None = None,
    on_step: StepHook | None = None,
    now: datetime | None = None,
) -> AuditResult:
    """Audit the account in `regions` (default: the session's region; `all_regions`: every enabled one).

    Raises CliError on a bad region or setting, and botocore errors (credentials, access denied, endpoint) as
    they come, with the region added as a note: `imds_enforcer_cli.errors.describe` makes them one line.
    """
    import os

    settings = audit_settings(os.environ if environ is None else environ, lookback_days=lookback_days)
    session = session or aws.new_session()
    targets = aws.resolve_regions(session, regions=regions, all_regions=all_regions, endpoint_url=endpoint_url)
    account = aws.caller_account(session, region=targets[0], endpoint_url=endpoint_url)
    total = len(targets) * len(AUDIT_STEPS)
    done = 0

    def step(region: str, name: str) -> None:
        nonlocal done
        if on_step is not None:
            on_step(done, total, f"{region}: {name}")
        done += 1

    audited = []
    for region in targets:
        with aws.aws_scope(region, endpoint_url=endpoint_url), aws.in_region(region):
            audited.append(_audit_region(region, account, settings, step, now=now))
    if on_step is not None:
        on_step(total, total, "done")
    return AuditResult(account=account, regions=audited, lookback_days=settings.LOOKBACK_DAYS)


def _audit_region(
    region: str,
    account: str,
    settings: Settings,
    step: Callable[[str, str], None],
    *,
    now: datetime | None,
) -> RegionAudit:
    step(region, AUDIT_STEPS[0])
    outcome = run_gate({}, settings=settings, deployment=Deployment(account, region), now=now, publish=False)
    findings = list(outcome.findings)

    step(region, AUDIT_STEPS[1])
    required = sum(1 for _ in ec2.iter_instances_by_tokens("required"))

    step(region, AUDIT_STEPS[2])
    default, default_finding = read_account_default(account)
    if default_finding is not None:
        findings.append(default_finding)

    totals = {
        **outcome.totals,
        "instances_optional": outcome.totals.get("instances_scanned", 0),
        "instances_required": required,
        "account_default_required": int(default.requires_imdsv2),
    }
    report = Report(
        account=account,
        region=region,
        trigger=AUDIT_TRIGGER,
        mode=settings.ENFORCEMENT_MODE.value,
        totals=totals,
        findings=sort_findings(findings),
    )
    return RegionAudit(
        region=region,
        report=report,
        instances_required=required,
        account_default=default,
        sources_checked=not outcome.totals.get("source_checks_skipped", 0),
    )


def read_account_default(account: str) -> tuple[AccountDefault, Finding | None]:
    try:
        defaults = ec2.instance_metadata_defaults()
    except AwsError as error:
        if error.code in UNSUPPORTED_CODES:
            return AccountDefault(http_tokens=None, note=f"GetInstanceMetadataDefaults: {error.code}"), None
        raise
    tokens = str(defaults.get("HttpTokens", "no-preference"))
    managed_by = str(defaults.get("ManagedBy", "account"))
    default = AccountDefault(http_tokens=tokens, managed_by=managed_by)
    if default.requires_imdsv2:
        return default, None
    where = (
        "managed by a declarative policy: change it in the organization's policy"
        if managed_by == "declarative-policy"
        else "set it to required once the instances are done (the gate's SET_ACCOUNT_DEFAULT does it)"
    )
    finding = Finding(
        resource_type=ACCOUNT_RESOURCE,
        resource_id=account,
        action=Action.FLAGGED,
        reason=f"the account default HttpTokens is {tokens}: instances launched without MetadataOptions accept "
        f"IMDSv1; {where}",
        details={
            "http_tokens": tokens,
            "http_tokens_enforced": str(defaults.get("HttpTokensEnforced", "disabled")),
            "managed_by": managed_by,
        },
    )
    return default, finding


def run_enforce(
    *,
    apply: bool,
    region: str | None = None,
    lookback_days: int | None = None,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    session: boto3.session.Session | None = None,
    now: datetime | None = None,
) -> AuditResult:
    """One usage-gate sweep of one region, unpublished (the Lambda's rules; `apply` = fix mode)."""
    import os

    settings = enforce_settings(os.environ if environ is None else environ, apply=apply, lookback_days=lookback_days)
    session = session or aws.new_session()
    (target,) = aws.resolve_regions(session, regions=[region] if region else [], endpoint_url=endpoint_url)
    account = aws.caller_account(session, region=target, endpoint_url=endpoint_url)
    with aws.aws_scope(target, endpoint_url=endpoint_url), aws.in_region(target):
        try:
            outcome = run_gate({}, settings=settings, deployment=Deployment(account, target), now=now, publish=False)
        except UnexpectedAwsError as error:
            if error.report is None:
                raise
            # Some calls failed, others changed instances: what happened must still be shown.
            raise SweepIncomplete(_enforce_result(error.report, account, target, settings), error) from error
    assert outcome.report is not None  # a manual run is never ignored
    return _enforce_result(outcome.report, account, target, settings)


class SweepIncomplete(Exception):  # noqa: N818 - it is the sweep's outcome, carried to the printer
    """The sweep ran, but an AWS call failed unexpectedly: `result` is what it did, `cause` the failure."""

    def __init__(self, result: AuditResult, cause: UnexpectedAwsError) -> None:
        super().__init__(str(cause))
        self.result = result
        self.cause = cause


def _enforce_result(report: Report, account: str, region: str, settings: Settings) -> AuditResult:
    return AuditResult(
        account=account,
        regions=[
            RegionAudit(region=region, report=report.model_copy(update={"findings": sort_findings(report.findings)}))
        ],
        lookback_days=settings.LOOKBACK_DAYS,
        mode=settings.ENFORCEMENT_MODE.value,
        command="enforce",
    )


def resolve_enforce_target(
    *, region: str | None, endpoint_url: str | None, session: boto3.session.Session | None = None
) -> tuple[str, str]:
    """(account, region) that `run_enforce` would act on: the confirmation prompt names them before any change."""
    session = session or aws.new_session()
    (target,) = aws.resolve_regions(session, regions=[region] if region else [], endpoint_url=endpoint_url)
    return aws.caller_account(session, region=target, endpoint_url=endpoint_url), target


# The transition path, step by step, and the guardrail hint: pure functions of a RegionAudit.


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _open_instances(region: RegionAudit) -> int:
    return sum(count for action, count in region.instance_counts().items() if action in OPEN_ACTIONS)


def guardrail_hint(region: RegionAudit) -> GuardrailHint:
    counts = region.instance_counts()
    open_instances = _open_instances(region)
    open_sources = [
        _plural(len(found), kind.replace("_", " "))
        for kind in ("launch_template", "launch_configuration", *EC2_LAUNCHING_DOORS)
        if (found := [item for item in region.findings_of(kind) if item.action is not Action.EXEMPT])
    ]
    blockers: list[str] = []
    if open_instances or open_sources:
        left = [_plural(open_instances, "instance")] if open_instances else []
        blockers.append(
            f"{' and '.join(left + open_sources)} still allow IMDSv1 (the launch guardrail would deny launches that "
            "rely on them)"
        )
    rejected = counts[Action.REJECTED] + counts[Action.ROLLED_BACK]
    if rejected:
        blockers.append(f"{_plural(rejected, 'enforced instance')} with IMDSv1 calls rejected since the switch")
    if blockers:
        return GuardrailHint(Readiness.NOT_READY, "not ready for guardrails: " + "; ".join(blockers))
    if counts[Action.EXEMPT]:
        return GuardrailHint(
            Readiness.READY_EXCEPT_EXEMPT,
            f"ready for guardrails except {_plural(counts[Action.EXEMPT], 'exempt instance')}: `imds-enforcer "
            "guardrails --no-role-delivery` keeps their IMDSv1 credentials working (relaunching them needs a "
            "--break-glass-role)",
        )
    return GuardrailHint(
        Readiness.READY,
        "ready for guardrails: nothing accepts IMDSv1; apply `imds-enforcer guardrails --format scp` (or iam)",
    )


def transition_steps(region: RegionAudit) -> list[Step]:
    counts = region.instance_counts()
    optional = sum(counts[action] for action in (*OPEN_ACTIONS, Action.EXEMPT))
    steps: list[Step] = []
    parts = [
        f"{counts[action]} {action.value.replace('_', ' ')}"
        for action in (Action.READY, Action.BLOCKED, Action.INSUFFICIENT_DATA, Action.FLAGGED, Action.EXEMPT)
        if counts[action]
    ]
    required = "" if region.instances_required is None else f"{region.instances_required} required, "
    enforced = f"{counts[Action.ENFORCED]} enforced now, " if counts[Action.ENFORCED] else ""
    steps.append(
        Step(
            "instances: require IMDSv2",
            "action" if _open_instances(region) else "ok",
            f"{enforced}{required}{optional} optional" + (f" ({', '.join(parts)})" if parts else ""),
        )
    )
    blocked = [finding for finding in region.findings_of("instance") if finding.action is Action.BLOCKED]
    calls = sum(finding.metadata_no_token or 0 for finding in blocked)
    if blocked:
        usage = f"{_plural(len(blocked), 'instance')} made {calls:g} IMDSv1 calls in the window: update their software"
    else:
        usage = "no IMDSv1 calls seen on the instances with data"
    if counts[Action.INSUFFICIENT_DATA]:
        usage += f"; {_plural(counts[Action.INSUFFICIENT_DATA], 'instance')} without enough data to tell"
    steps.append(Step("IMDSv1 use (MetadataNoToken)", "action" if blocked else "ok", usage))
    callers = callers_step(blocked, Step)
    if callers is not None:
        steps.append(callers)
    rejected = counts[Action.REJECTED] + counts[Action.ROLLED_BACK]
    if rejected:
        steps.append(
            Step(
                "watch after the switch",
                "action",
                f"{_plural(rejected, 'enforced instance')} reject IMDSv1 calls (MetadataNoTokenRejected)",
            )
        )
    if region.sources_checked is not None:
        for kind, title in (
            ("launch_template", "launch templates"),
            ("launch_configuration", "launch configurations"),
            ("image", "AMIs (ImdsSupport)"),
        ):
            if not region.sources_checked:
                steps.append(Step(title, "skipped", "not checked: the sweep ran out of time before it"))
                continue
            found = [item for item in region.findings_of(kind) if item.action is not Action.EXEMPT]
            steps.append(
                Step(
                    title,
                    "action" if found else "ok",
                    f"{_plural(len(found), kind.replace('_', ' '))} still allow{'s' if len(found) == 1 else ''} IMDSv1"
                    if found
                    else "none allow IMDSv1",
                )
            )
        if region.sources_checked:
            steps += door_steps(region.findings_of, Step)
    if region.account_default is not None:
        default = region.account_default
        if default.http_tokens is None:
            steps.append(Step("account default", "skipped", f"not available here ({default.note})"))
        else:
            steps.append(
                Step(
                    "account default",
                    "ok" if default.requires_imdsv2 else "action",
                    f"HttpTokens {default.http_tokens}"
                    + (f" (managed by {default.managed_by})" if default.managed_by != "account" else ""),
                )
            )
    hint = region.guardrail_hint
    steps.append(
        Step(
            "guardrails (IAM/SCP)",
            {Readiness.READY: "ok", Readiness.READY_EXCEPT_EXEMPT: "info", Readiness.NOT_READY: "action"}[
                hint.readiness
            ],
            hint.message,
        )
    )
    return steps

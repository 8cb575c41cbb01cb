"""The `imds-enforcer` console script: argument parsing, output streams, exit codes.

The work is done by the same code as the Lambdas (`imds_enforcer.workflows.usage_gate`,
`imds_enforcer.domain.guardrails`, ...) through `imds_enforcer_cli.audit`; this module only decides what goes to
stdout (the result, parseable in the machine formats), what goes to stderr (progress, prompts, the one-line error),
and the exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imds_enforcer.domain.organization import AUDIT_DEFAULT_WORKERS, AUDIT_ROLE_NAME
from imds_enforcer.domain.report import Severity
from imds_enforcer_cli.errors import CliError, ExitCode, describe
from imds_enforcer_cli.render import OutputFormat, render, summary_lines

if TYPE_CHECKING:
    from imds_enforcer_cli.audit import AuditResult

PROG = "imds-enforcer"
DEFAULT_TABLE_WIDTH = 140  # rich falls back to 80 columns off a terminal, which squeezes the reasons unreadably

EXIT_CODES_HELP = """\
exit codes:
  0  success (findings are reported, not failed on, unless --fail-on is given)
  1  --fail-on: a finding at or above the given severity (warning: blocked, flagged, insufficient data;
     high: rejected, rolled back, failed)
  2  usage error: bad arguments or settings, unknown region, --apply not confirmed
  3  AWS error: no credentials, access denied (the message names the permission), endpoint unreachable, or any
     other failed AWS call; with --org: an account, region or step that could not be read (every other account
     is still audited and printed, the unreadable ones as rows saying why)

Credentials and region come from the default chain (AWS_PROFILE, ~/.aws, SSO, environment, instance role);
--endpoint-url (or AWS_ENDPOINT_URL) points every call at an emulator such as a local moto server.
Settings such as EXEMPT_TAG_KEY, COVERAGE_MIN_RATIO or LOOKBACK_DAYS are read from the environment like the
Lambdas read them; `audit` always runs in flag mode, whatever ENFORCEMENT_MODE says.
"""


def _lookback_days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= 455:
        # CloudWatch keeps hourly data for 455 days: a longer window could never be covered.
        raise argparse.ArgumentTypeError(f"{days} is outside 1..455 days")
    return days


def _common(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=None,
        help="send every AWS call here (e.g. a local moto server); default: AWS_ENDPOINT_URL or AWS",
    )
    if output:
        parser.add_argument(
            "--format",
            dest="output_format",
            type=OutputFormat,
            choices=list(OutputFormat),
            default=OutputFormat.TABLE,
            help="table (default), json (one report per region, docs/report-schema.json), csv (one row per "
            "finding), markdown (a table per region)",
        )
        parser.add_argument(
            "--lookback-days",
            type=_lookback_days,
            metavar="N",
            default=None,
            help="the usage window in days (default: LOOKBACK_DAYS or 14)",
        )
        parser.add_argument(
            "--fail-on",
            type=Severity,
            choices=[Severity.WARNING, Severity.HIGH],
            default=None,
            help="exit 1 when a finding has this severity or higher (for CI)",
        )
        parser.add_argument("-v", "--verbose", action="store_true", help="the service's logs on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Audit and drive an AWS account's move to IMDSv2, with the same rules as the deployed service.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    audit = commands.add_parser(
        "audit",
        help="where the account stands on the IMDSv2 transition path (read only)",
        description="Read only: instances (optional/required, IMDSv1 use, readiness), launch templates, launch "
        "configurations, AMIs, the account default, and whether the guardrails can go on.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = audit.add_mutually_exclusive_group()
    where.add_argument("--region", action="append", default=[], metavar="REGION", help="a region to audit (repeatable)")
    where.add_argument("--all-regions", action="store_true", help="every region enabled for the account")
    _common(audit)
    org = audit.add_argument_group(
        "organization",
        "Run from the management account or a delegated administrator: every account of the organization (or of "
        "the OUs), through the read-only role the StackSet deploys in each member, in parallel. One row per "
        "account-region and the organization's totals; JSON is one report per account-region.",
    )
    org.add_argument("--org", action="store_true", help="audit every account of the organization")
    org.add_argument(
        "--role-name",
        default=None,
        metavar="NAME",
        help=f"the role to assume in each member account (default: {AUDIT_ROLE_NAME}, from the StackSet)",
    )
    org.add_argument(
        "--ou",
        action="append",
        default=[],
        metavar="OU-ID",
        help="only the accounts under this OU or root, recursively (repeatable; default: the whole organization)",
    )
    org.add_argument(
        "--max-workers",
        type=int,
        default=None,
        metavar="N",
        help=f"account-regions audited at once (default {AUDIT_DEFAULT_WORKERS})",
    )

    enforce = commands.add_parser(
        "enforce",
        help="one sweep of the usage gate from a workstation (--dry-run or --apply)",
        description="One sweep of the usage gate, with the deployed service's rules: an instance is switched to "
        "IMDSv2 only when its MetadataNoToken was zero over the whole window. The report is printed, not published.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = enforce.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="flag mode: report what would be enforced")
    mode.add_argument("--apply", action="store_true", help="fix mode: require IMDSv2 on the ready instances")
    enforce.add_argument("--yes", action="store_true", help="do not ask for confirmation before --apply")
    enforce.add_argument("--region", default=None, metavar="REGION", help="the region (default: the session's)")
    _common(enforce)

    guardrails = commands.add_parser(
        "guardrails",
        help="print the IAM or SCP guardrail policy document (JSON)",
        description="Print the Deny-only policy document that keeps the account on IMDSv2 (valid JSON on stdout).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    guardrails.add_argument(
        "--format", dest="policy_format", choices=["iam", "scp"], required=True, help="IAM managed policy or SCP"
    )
    guardrails.add_argument("--max-hop-limit", type=int, default=2, metavar="N", help="highest hop limit allowed")
    guardrails.add_argument(
        "--break-glass-role",
        action="append",
        default=[],
        metavar="ARN",
        help="a role ARN (or ArnLike pattern) the guardrails never stop (repeatable)",
    )
    guardrails.add_argument(
        "--no-role-delivery",
        action="store_true",
        help="leave out the ec2:RoleDelivery Deny (it breaks every instance still using IMDSv1)",
    )
    guardrails.add_argument(
        "--deployment-role",
        action="append",
        default=[],
        metavar="ARN",
        help="a role that deploys the service: the only one that may create or change its roles and functions "
        "(repeatable; default: service-managed StackSets' execution roles)",
    )
    guardrails.add_argument("--partition", choices=["aws", "aws-cn", "aws-us-gov"], default="aws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse has printed the usage and the error (or the help): keep its code, 2 or 0.
        return exit_.code if isinstance(exit_.code, int) else ExitCode.USAGE
    try:
        with _service_logs(verbose=getattr(args, "verbose", False)):
            if args.command == "audit":
                return _audit(args)
            if args.command == "enforce":
                return _enforce(args)
            return _guardrails(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `imds-enforcer ... | head`: the reader left. Point stdout at devnull so the interpreter's final flush
        # does not raise a second time, and exit quietly as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as error:
        described = describe(error)
        if described is None:
            raise  # a bug: the traceback is what a maintainer needs
        message, code = described
        print(f"{PROG}: {message}", file=sys.stderr)
        return int(code)


@contextmanager
def _service_logs(*, verbose: bool) -> Iterator[None]:
    """The service logs JSON lines to stdout (Lambda's convention); here stdout is the result, so the logs go to
    stderr, warnings only unless --verbose. Restored afterwards for callers in the same process."""
    from imds_enforcer.observability import logger

    handler = logger.registered_handler
    level = logger.log_level
    stream: TextIO | None = None
    if isinstance(handler, logging.StreamHandler):
        stream = handler.setStream(sys.stderr)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if stream is not None and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


def _stdout_console() -> Console:
    out = sys.stdout
    width: int | None = None
    if not out.isatty():
        try:
            width = int(os.environ.get("COLUMNS", DEFAULT_TABLE_WIDTH))
        except ValueError:
            width = DEFAULT_TABLE_WIDTH
    return Console(file=out, width=width, highlight=False)


def _stderr_tty() -> bool:
    return sys.stderr.isatty()


def _finish(result_format: OutputFormat, fail_on: Severity | None, result: AuditResult) -> int:
    render(result, result_format, _stdout_console())
    if result_format in (OutputFormat.JSON, OutputFormat.CSV) and _stderr_tty():
        # The data stays parseable on stdout; a person at a terminal still gets the summary.
        for line in summary_lines(result):
            print(line, file=sys.stderr)
    if fail_on is not None and result.needs_action(fail_on):
        return int(ExitCode.FINDINGS)
    return int(ExitCode.OK)


def _audit(args: argparse.Namespace) -> int:
    from imds_enforcer_cli.audit import run_audit

    if args.org:
        return _org_audit(args)
    given = [
        flag
        for flag, value in (
            ("--role-name", args.role_name),
            ("--ou", args.ou or None),
            ("--max-workers", args.max_workers),
        )
        if value is not None
    ]
    if given:
        raise CliError(f"{', '.join(given)}: only with --org", ExitCode.USAGE)
    if not _stderr_tty():
        result = run_audit(
            regions=args.region,
            all_regions=args.all_regions,
            lookback_days=args.lookback_days,
            endpoint_url=args.endpoint_url,
        )
        return _finish(args.output_format, args.fail_on, result)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task("starting", total=None)

        def on_step(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        result = run_audit(
            regions=args.region,
            all_regions=args.all_regions,
            lookback_days=args.lookback_days,
            endpoint_url=args.endpoint_url,
            on_step=on_step,
        )
    return _finish(args.output_format, args.fail_on, result)


def _org_audit(args: argparse.Namespace) -> int:
    from imds_enforcer_cli.org_audit import Status, run_org_audit
    from imds_enforcer_cli.org_render import render_org
    from imds_enforcer_cli.org_render import summary_lines as org_summary_lines

    options = {
        "role_name": args.role_name or AUDIT_ROLE_NAME,
        "ou_ids": args.ou,
        "regions": args.region,
        "all_regions": args.all_regions,
        "lookback_days": args.lookback_days,
        "endpoint_url": args.endpoint_url,
        "max_workers": AUDIT_DEFAULT_WORKERS if args.max_workers is None else args.max_workers,
    }
    if _stderr_tty():
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("account-regions"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            task = progress.add_task("listing the organization's accounts", total=None)

            def on_step(done: int, total: int, label: str) -> None:
                progress.update(task, completed=done, total=total, description=label)

            result = run_org_audit(**options, on_step=on_step)
    else:
        result = run_org_audit(**options)
    render_org(result, args.output_format, _stdout_console())
    if args.output_format in (OutputFormat.JSON, OutputFormat.CSV) and _stderr_tty():
        for line in org_summary_lines(result):
            print(line, file=sys.stderr)
    if not result.complete:
        # Everything readable is printed above; the exit code says the picture has holes (as an AWS error would).
        unreadable = [row.account.id for row in result.unreadable]
        partial = sum(1 for item in result.results if item.status is not Status.AUDITED)
        print(
            f"{PROG}: incomplete audit: {len(unreadable)} account(s) could not be entered"
            + (f" ({', '.join(unreadable[:5])}{', ...' if len(unreadable) > 5 else ''})" if unreadable else "")
            + f", {partial} account-region(s) not fully read; the rows say why",
            file=sys.stderr,
        )
        return int(ExitCode.AWS)
    if args.fail_on is not None and result.needs_action(args.fail_on):
        return int(ExitCode.FINDINGS)
    return int(ExitCode.OK)


def _confirm(account: str, region: str) -> None:
    if not sys.stdin.isatty():
        raise CliError("--apply changes instances: confirm it in a terminal, or pass --yes", ExitCode.USAGE)
    sys.stderr.write(
        f"Require IMDSv2 on every instance in account {account}, region {region}, whose MetadataNoToken was zero "
        "over the whole window? [y/N] "
    )
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not confirmed: nothing changed", ExitCode.USAGE)


def _enforce(args: argparse.Namespace) -> int:
    from imds_enforcer_cli.audit import SweepIncomplete, resolve_enforce_target, run_enforce

    if args.apply and not args.yes:
        account, region = resolve_enforce_target(region=args.region, endpoint_url=args.endpoint_url)
        _confirm(account, region)

    def sweep() -> AuditResult:
        return run_enforce(
            apply=args.apply, region=args.region, lookback_days=args.lookback_days, endpoint_url=args.endpoint_url
        )

    try:
        if _stderr_tty():
            with Console(stderr=True).status("sweeping: instances, MetadataNoToken, decisions ..."):
                result = sweep()
        else:
            result = sweep()
    except SweepIncomplete as incomplete:
        # Print what the sweep did (it may have changed instances), then fail with the one-line error (exit 3).
        _finish(args.output_format, None, incomplete.result)
        raise incomplete.cause from None
    return _finish(args.output_format, args.fail_on, result)


def _guardrails(args: argparse.Namespace) -> int:
    from imds_enforcer.domain.guardrails import DEFAULT_DEPLOYMENT_ROLE_ARNS, iam_policy_document, scp_document

    build = scp_document if args.policy_format == "scp" else iam_policy_document
    document = build(
        max_hop_limit=args.max_hop_limit,
        exempt_principal_arns=args.break_glass_role,
        include_role_delivery=not args.no_role_delivery,
        partition=args.partition,
        deployment_role_arns=args.deployment_role
        or [arn.replace("arn:aws:", f"arn:{args.partition}:", 1) for arn in DEFAULT_DEPLOYMENT_ROLE_ARNS],
    )
    print(json.dumps(document, indent=2))
    return int(ExitCode.OK)

"""Exit codes and the one-line messages the CLI prints instead of a traceback."""

from __future__ import annotations

from enum import IntEnum

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from imds_enforcer.aws.errors import AwsError, UnexpectedAwsError
from imds_enforcer.domain.guardrails import GuardrailsError
from imds_enforcer.domain.settings import SettingsError


class ExitCode(IntEnum):
    OK = 0
    FINDINGS = 1  # --fail-on: findings at or above the threshold (CI gates on this)
    USAGE = 2  # bad arguments or settings, unknown region, declined confirmation
    AWS = 3  # credentials, permissions, endpoint, or any other AWS failure


class CliError(Exception):
    """A failure the user can act on: printed as one line, mapped to an exit code."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess", "AuthorizationError"}
)
# The IAM service prefix of every operation the CLI's code path calls, so that a denial names the permission to
# grant (ClientError carries the operation, not the service).
_SERVICE_OF_OPERATION = {
    "DescribeInstances": "ec2",
    "DescribeRegions": "ec2",
    "DescribeLaunchTemplates": "ec2",
    "DescribeLaunchTemplateVersions": "ec2",
    "DescribeImages": "ec2",
    "GetInstanceMetadataDefaults": "ec2",
    "ModifyInstanceMetadataOptions": "ec2",
    "ModifyInstanceMetadataDefaults": "ec2",
    "CreateTags": "ec2",
    "CreateLaunchTemplateVersion": "ec2",
    "ModifyLaunchTemplate": "ec2",
    "ModifyImageAttribute": "ec2",
    "GetMetricData": "cloudwatch",
    "DescribeLaunchConfigurations": "autoscaling",
    "GetCallerIdentity": "sts",
    # audit --org: the organization's structure (management account or delegated administrator), and the members.
    "AssumeRole": "sts",
    "ListRoots": "organizations",
    "ListAccountsForParent": "organizations",
    "ListOrganizationalUnitsForParent": "organizations",
    "DescribeOrganizationalUnit": "organizations",
}
# AWS error messages can carry an encoded authorization message of several kilobytes: one line stays readable.
MESSAGE_LIMIT = 300


def permission_for(operation: str) -> str:
    service = _SERVICE_OF_OPERATION.get(operation)
    return f"{service}:{operation}" if service else operation


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MESSAGE_LIMIT else flat[: MESSAGE_LIMIT - 3] + "..."


def _where(error: BaseException) -> str:
    # run_audit/run_enforce add the region as a note (PEP 678), so the message says where the call failed.
    notes = getattr(error, "__notes__", None) or []
    return f" ({'; '.join(notes)})" if notes else ""


def describe(error: BaseException) -> tuple[str, ExitCode] | None:
    """The one-line message and exit code for an AWS or botocore failure; None for anything else (a bug)."""
    where = _where(error)
    if isinstance(error, AwsError) and isinstance(error.__cause__, ClientError | BotoCoreError):
        # The adapters' own exception: describe what botocore said, where the adapter said it.
        cause = error.__cause__
        for note in getattr(error, "__notes__", None) or []:
            if note not in (getattr(cause, "__notes__", None) or []):
                cause.add_note(note)
        return describe(cause)
    if isinstance(error, CliError):
        return str(error), error.exit_code
    if isinstance(error, SettingsError | GuardrailsError):
        return str(error), ExitCode.USAGE
    if isinstance(error, UnexpectedAwsError):
        # The gate's own failures (e.g. a modify refused): the message names the operation and the instance.
        return f"AWS calls failed during the sweep{where}: {_one_line(str(error))}", ExitCode.AWS
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found: configure the default chain (AWS_PROFILE, ~/.aws/credentials, SSO, "
            f"environment variables or an instance role) and try again{where}",
            ExitCode.AWS,
        )
    if isinstance(error, ProfileNotFound):
        return f"{error}{where}", ExitCode.AWS
    if isinstance(error, NoRegionError):
        return "no region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION", ExitCode.USAGE
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        url = getattr(error, "kwargs", {}).get("endpoint_url", "")
        return f"cannot reach the AWS endpoint {url or ''}: {_one_line(str(error))}{where}", ExitCode.AWS
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        message = _one_line(str(error.response.get("Error", {}).get("Message", "")))
        operation = error.operation_name
        if code in ACCESS_DENIED_CODES:
            return (
                f"access denied: the caller may not call {permission_for(operation)} ({code}){where}; grant "
                f"{permission_for(operation)} to the role or user running the CLI"
                + (f": {message}" if message else ""),
                ExitCode.AWS,
            )
        return f"AWS error {code} in {operation}{where}: {message}", ExitCode.AWS
    if isinstance(error, BotoCoreError):
        return f"AWS client error: {_one_line(str(error))}{where}", ExitCode.AWS
    return None

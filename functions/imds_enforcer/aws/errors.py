"""AWS failures as the rest of the service sees them: one exception type, classified once.

Every adapter in this package calls AWS inside ``translated(operation)``, so a botocore ``ClientError`` leaves the
package as an ``AwsError`` that names the operation, the error code, the message and the retries botocore already
made. Workflows catch ``AwsError`` (never botocore's classes) and decide from ``expected`` whether a failure is
reported and absorbed (it describes the resource, or the next run will do better) or raised after the report is out,
so that Lambda's retry and the dead-letter queue see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import ClientError

from imds_enforcer.domain.report import Action, Finding, Report

# Codes that describe the instance, not a fault of ours: report them, let the next event or run try again.
EXPECTED_ERROR_CODES = frozenset(
    {
        "IncorrectInstanceState",
        "IncorrectState",
        "InvalidInstanceID.NotFound",
        "InvalidInstanceID.Malformed",
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "UnsupportedOperation",
    }
)
# The same for launch sources (templates, AMIs): they can vanish or refuse between the listing and the change.
EXPECTED_SOURCE_ERROR_CODES = EXPECTED_ERROR_CODES | {
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.Malformed",
    "InvalidLaunchTemplateId.VersionNotFound",
    "InvalidLaunchTemplateName.NotFoundException",
    "LaunchTemplateVersionLimitExceeded",
    "IdempotentParameterMismatch",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidAMIID.Unavailable",
}


class AwsError(Exception):
    """An AWS call that failed after botocore's own retries. The original botocore error is ``__cause__``."""

    def __init__(self, operation: str, code: str, message: str = "", *, retry_attempts: int = 0) -> None:
        super().__init__(f"{operation} failed: {code}" + (f" ({message})" if message else ""))
        self.operation = operation
        self.code = code
        self.message = message
        self.retry_attempts = retry_attempts

    @classmethod
    def from_client_error(cls, operation: str, error: ClientError) -> AwsError:
        detail = error.response.get("Error", {})
        return cls(
            error.operation_name or operation,
            str(detail.get("Code", "Unknown")),
            str(detail.get("Message", "")),
            retry_attempts=int(error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)),
        )

    @property
    def expected(self) -> bool:
        return self.code in EXPECTED_ERROR_CODES

    @property
    def expected_for_sources(self) -> bool:
        return self.code in EXPECTED_SOURCE_ERROR_CODES

    def finding(self, resource_id: str, operation: str | None = None, resource_type: str = "instance") -> Finding:
        """A `failed` finding that says which call failed, with which code and message, after how many retries."""
        reason = f"{operation or self.operation} failed: {self.code}" + (f" ({self.message})" if self.message else "")
        if self.retry_attempts:
            reason += f" after {self.retry_attempts} retries"
        return Finding(
            resource_type=resource_type,
            resource_id=resource_id,
            action=Action.FAILED,
            reason=reason,
            error_code=self.code,
        )


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Run AWS calls; a botocore ClientError leaves as an AwsError naming ``operation`` (or the call's own name)."""
    try:
        yield
    except ClientError as error:
        raise AwsError.from_client_error(operation, error) from error


class UnexpectedAwsError(RuntimeError):
    """Raised by a workflow after its report is out, so Lambda's retry and the failure destination see the fault.

    Carries the run's report, so a caller that does not publish (the CLI) can still show what happened."""

    def __init__(self, message: str, *, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report

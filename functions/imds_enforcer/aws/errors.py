"""AWS failures as the rest of the service sees them: one exception type, classified once.

Every adapter in this package calls AWS inside ``translated(operation)``, so a botocore ``ClientError`` and every
other botocore failure (``BotoCoreError``: read timeouts, refused connections, a response cut short...) leave the
package as an ``AwsError`` that names the operation, the error code (a botocore class name stands in for the code of
a failure that never got an answer), the message and the retries botocore already made. Workflows catch ``AwsError``
(never botocore's classes) and decide from ``retryable`` whether a failure is reported and absorbed (it describes the
resource, or a policy refuses it: a retry would get the same answer) or raised after the report is out, so that
Lambda's retry and the dead-letter queue see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

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

# A policy said no (an SCP, a permissions boundary, the role's own conditions): the same call gets the same answer.
REFUSED_ERROR_CODES = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthorizationError", "OptInRequired"}
)
# Server-side faults a later attempt can get past, whatever their HTTP status says.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestExpired",
    }
)
# botocore failures without an answer from AWS: the connection, not the request, went wrong.
_NO_ANSWER = (BotoConnectionError, HTTPClientError, IncompleteReadError)


class AwsError(Exception):
    """An AWS call that failed after botocore's own retries. The original botocore error is ``__cause__``."""

    def __init__(
        self,
        operation: str,
        code: str,
        message: str = "",
        *,
        retry_attempts: int = 0,
        status: int | None = None,
        answered: bool = True,
    ) -> None:
        super().__init__(f"{operation} failed: {code}" + (f" ({message})" if message else ""))
        self.operation = operation
        self.code = code
        self.message = message
        self.retry_attempts = retry_attempts
        self.status = status  # the HTTP status of AWS's answer (None: no answer, or not known)
        self.answered = answered  # False: a timeout or connection failure, AWS's answer never arrived

    @classmethod
    def from_client_error(cls, operation: str, error: ClientError) -> AwsError:
        detail = error.response.get("Error", {})
        return cls(
            error.operation_name or operation,
            str(detail.get("Code", "Unknown")),
            str(detail.get("Message", "")),
            retry_attempts=int(error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)),
            status=error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        )

    @classmethod
    def from_botocore_error(cls, operation: str, error: BotoCoreError) -> AwsError:
        """A failure botocore raised itself (no error code from AWS): the class name stands in for the code, so
        the finding names the error (ReadTimeoutError, EndpointConnectionError, ...)."""
        return cls(operation, type(error).__name__, str(error), answered=not isinstance(error, _NO_ANSWER))

    @property
    def expected(self) -> bool:
        return self.code in EXPECTED_ERROR_CODES

    @property
    def expected_for_sources(self) -> bool:
        return self.code in EXPECTED_SOURCE_ERROR_CODES

    @property
    def refused(self) -> bool:
        """A policy refused the call (an SCP, a boundary, the role's conditions): retrying gets the same answer."""
        return self.code in REFUSED_ERROR_CODES

    @property
    def retryable(self) -> bool:
        """Whether a later attempt of the whole run can succeed where botocore's own retries did not: a server-side
        fault (5xx, or a code AWS documents as transient) or no answer at all (timeout, connection). Workflows raise
        after reporting only for these, so Lambda's retry gets its chance; a refusal, a bad request or a resource
        in the wrong state is reported as `failed` once per run and does not send every run to the dead-letter queue.
        Throttling is expected: botocore already backed off, and the next run continues where this one stopped."""
        if self.expected or self.refused:
            return False
        if not self.answered or self.code in TRANSIENT_ERROR_CODES:
            return True
        if self.status is not None:
            return self.status >= 500
        # No status and not one of botocore's no-answer failures (an unknown local failure): loud, so a person looks.
        return True

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
    """Run AWS calls; a botocore ClientError, or any other botocore failure (timeouts, connection errors), leaves as
    an AwsError naming ``operation`` (or the call's own name) and the error."""
    try:
        yield
    except ClientError as error:
        raise AwsError.from_client_error(operation, error) from error
    except BotoCoreError as error:
        raise AwsError.from_botocore_error(operation, error) from error


class UnexpectedAwsError(RuntimeError):
    """Raised by a workflow after its report is out, so Lambda's retry and the failure destination see the fault.

    Carries the run's report, so a caller that does not publish (the CLI) can still show what happened."""

    def __init__(self, message: str, *, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report

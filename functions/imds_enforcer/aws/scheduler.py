"""EventBridge Scheduler adapter: the usage gate's continuation, a one-time schedule that invokes the gate again.

A one-time schedule (`at(...)`, UTC) with ActionAfterCompletion=DELETE fires once and removes itself. Its name is
derived from the sweep and the run it starts, so a run that is retried after it already scheduled its continuation
meets ConflictException and knows the continuation is there: one continuation per run, never two.
"""

from __future__ import annotations

from datetime import UTC, datetime

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

ALREADY_EXISTS = "ConflictException"


def at_expression(moment: datetime) -> str:
    """`at(yyyy-mm-ddThh:mm:ss)`, in UTC (the schedule says so: ScheduleExpressionTimezone)."""
    return f"at({moment.astimezone(UTC):%Y-%m-%dT%H:%M:%S})"


def schedule_once(
    *,
    group: str,
    name: str,
    at: datetime,
    target_arn: str,
    role_arn: str,
    payload: str,
    dead_letter_arn: str = "",
    max_event_age_seconds: int = 3600,
    retry_attempts: int = 10,
) -> bool:
    """Invoke `target_arn` (a Lambda function) once at `at` with `payload`. False if that schedule already exists."""
    target: dict[str, object] = {
        "Arn": target_arn,
        "RoleArn": role_arn,
        "Input": payload,
        # Delivery to Lambda (an asynchronous invoke) is retried for a while, then lands in the dead-letter queue;
        # the invocation itself then has Lambda's own retries and failure destination, like any other.
        "RetryPolicy": {"MaximumEventAgeInSeconds": max_event_age_seconds, "MaximumRetryAttempts": retry_attempts},
    }
    if dead_letter_arn:
        target["DeadLetterConfig"] = {"Arn": dead_letter_arn}
    try:
        with translated("CreateSchedule"):
            clients.scheduler().create_schedule(
                Name=name,
                GroupName=group,
                ScheduleExpression=at_expression(at),
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                Target=target,  # type: ignore[arg-type]
                ActionAfterCompletion="DELETE",
                Description="IMDSv2 Enforcer: the usage gate's sweep continues",
            )
    except AwsError as error:
        if error.code == ALREADY_EXISTS:
            return False
        raise
    return True

"""The one way this service deploys a Lambda: same runtime, code, layer, logging, role shape and failure handling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imds_enforcer.domain.guardrails import service_function_name, service_role_name
from imds_enforcer.domain.settings import SERVICE_ROLE_PATH
from infra.constructs.nag import acknowledge, nag_resource
from infra.constructs.permissions import Permission

# The newest Python in aws-cdk-lib (cdk-nag rule L1 flags anything older); the layer is built for the same one.
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64

# Everything under functions/ that is not Lambda code: tests, caches, and the requirements (vendored in the layer).
CODE_EXCLUDES = [
    "requirements*.txt",
    "**/__pycache__",
    "**/*.pyc",
    "tests",
    "**/tests",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
]

POWERTOOLS_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": "imds-enforcer",
    "POWERTOOLS_METRICS_NAMESPACE": "ImdsEnforcer",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}


# jsii enums are keyed by name; DeployConfig validates the day count, this maps it (every allowed value is here).
_RETENTION: dict[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def log_retention(days: int) -> logs.RetentionDays:
    return _RETENTION[days]


def runtime_python_version() -> str:
    """``"3.14"`` for ``python3.14``: the version pip must download wheels for."""
    return RUNTIME.name.removeprefix("python")


LAYER_EXCLUDES = [".requirements-sha256"]


class DependenciesLayer(Construct):
    """The vendored third-party packages (see ``infra.layer``), shared by every function: from the local build
    folder, or (a StackSet member, which has no CDK assets) the same zip published to S3, as ``code``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, layer_dir: Path | None = None, code: lambda_.Code | None = None
    ) -> None:
        super().__init__(scope, construct_id)
        if code is None:
            assert layer_dir is not None, "a layer needs its folder or its code"
            code = lambda_.Code.from_asset(str(layer_dir), exclude=LAYER_EXCLUDES)
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=code,
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="IMDSv2 Enforcer dependencies: aws-lambda-powertools, pydantic, slack-sdk",
        )


@dataclass(frozen=True)
class FunctionWiring:
    """What every function of a stack shares: the code asset, the dependencies layer, the environment (validated
    by the runtime settings model) and the log retention. Built once by the stack, passed to each construct."""

    code: lambda_.Code
    layers: Sequence[lambda_.ILayerVersion]
    environment: Mapping[str, str]
    log_retention: logs.RetentionDays

    @classmethod
    def of(
        cls,
        *,
        code_dir: Path,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> FunctionWiring:
        return cls(
            code=lambda_.Code.from_asset(str(code_dir), exclude=CODE_EXCLUDES),
            layers=tuple(layers),
            environment=dict(environment),
            log_retention=log_retention,
        )

    def with_environment(self, environment: Mapping[str, str]) -> FunctionWiring:
        """The same wiring with another environment (the Slack notifier reads only its own setting)."""
        return replace(self, environment=dict(environment))


class EnforcerFunction(Construct):
    """A Lambda with its own log group, least-privilege role and dead-letter queue.

    The role starts empty (no AWS managed policy): it can write to its own log group, send failed async
    invocations to its own queue, and do what ``permissions`` allow; each wildcard resource in them is acknowledged
    to cdk-nag with the reason its permission gives. Async invocations are retried twice, then land in
    ``dead_letter_queue``; the EventBridge rules that invoke the function use the same queue.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        wiring: FunctionWiring,
        handler: str,
        description: str,
        permissions: Sequence[Permission],
        memory_size: int,
        timeout: cdk.Duration,
        reserved_concurrency: int | None,
    ) -> None:
        super().__init__(scope, construct_id)

        self.log_group = logs.LogGroup(self, "Logs", retention=wiring.log_retention)

        region = cdk.Stack.of(self).region
        # A fixed name under the service's IAM path (imds-enforcer-<name>-<region>): the guardrails exempt exactly
        # these roles and the launch watch recognises exactly their calls; a path alone anyone could choose.
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=description,
            path=SERVICE_ROLE_PATH,
            role_name=service_role_name(name, region),
        )
        # What AWSLambdaBasicExecutionRole would give, but only on this function's own log group.
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WriteOwnLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
            )
        )
        self._grant(permissions)

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            # The longest SQS allows: failures over a holiday weekend are still there to inspect and redrive.
            retention_period=cdk.Duration.days(14),
        )
        acknowledge(
            self.dead_letter_queue,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter destination of the function's failed async invocations and of "
            "what invokes it (EventBridge targets, the SNS subscription); a DLQ for a DLQ adds nothing.",
        )

        self.function = lambda_.Function(
            self,
            "Function",
            # Fixed too: the SCP's ProtectServiceRoles statement names the functions that run as exempt roles.
            function_name=service_function_name(name),
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=wiring.code,
            layers=list(wiring.layers),
            environment={**wiring.environment, **POWERTOOLS_ENVIRONMENT},
            memory_size=memory_size,
            timeout=timeout,
            reserved_concurrent_executions=reserved_concurrency,
            role=self.role,
            log_group=self.log_group,
            retry_attempts=2,
            on_failure=destinations.SqsDestination(self.dead_letter_queue),
        )

    def as_target(self, *, retry_attempts: int, max_event_age: cdk.Duration) -> targets.LambdaFunction:
        """An EventBridge target invoking this function, failing into its dead-letter queue after the retries."""
        return targets.LambdaFunction(
            self.function,
            dead_letter_queue=self.dead_letter_queue,
            retry_attempts=retry_attempts,
            max_event_age=max_event_age,
        )

    def add_permissions(self, permissions: Sequence[Permission]) -> None:
        """More statements for the role (organization mode: the security account's topic), acknowledged alike."""
        self._grant(permissions)

    def _grant(self, permissions: Sequence[Permission]) -> None:
        """Add the statements; acknowledge cdk-nag's wildcard finding once per wildcard resource, with the reasons of
        every statement that needs it."""
        reasons: dict[str, list[str]] = {}
        for permission in permissions:
            self.role.add_to_principal_policy(permission.statement)
            if permission.statement.effect is iam.Effect.DENY:
                continue  # a Deny takes away: cdk-nag's wildcard rule is about what an Allow grants
            for resource in permission.statement.resources:
                try:
                    flat = nag_resource(self, resource)
                except ValueError:
                    continue  # a reference to one resource of the stack (Fn::GetAtt): never a wildcard
                if "*" in flat:
                    if not permission.wildcard_reason:
                        raise ValueError(f"{permission.statement.sid}: wildcard resource {flat} without a reason")
                    reasons.setdefault(flat, []).append(permission.wildcard_reason)
        policy = self.role.node.try_find_child("DefaultPolicy")
        for resource, why in reasons.items():
            assert policy is not None  # a statement was added, so the role has its default policy
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{resource}]", " ".join(dict.fromkeys(why)))

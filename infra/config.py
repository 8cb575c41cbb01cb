"""Deploy-time configuration: one pydantic model read from the CDK context (cdk.json, overridable with ``-c``).

It composes the Lambdas' ``Settings`` (the one declaration of every runtime setting, read from cdk.json under its
lower-case name) with what only the deployment chooses (regions, schedule, sizes, subscriptions, guardrails).
Values given with ``cdk synth -c key=value`` arrive as strings, so every field accepts its string form too:
``"true"``/``"false"``, numeric strings, and comma-separated (or JSON) lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal

import aws_cdk as cdk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from imds_enforcer.domain.guardrails import (
    DEFAULT_DEPLOYMENT_ROLE_ARNS,
    DEFAULT_MAX_HOP_LIMIT,
    GuardrailOptions,
    GuardrailsError,
    iam_policy_document,
    scp_document,
    service_role_arns,
)
from imds_enforcer.domain.organization import (
    ACCOUNT_ID,
    AUDIT_ROLE_NAME,
    ORGANIZATION_ID,
    ROLE_NAME,
    is_ou_or_root,
    org_report_topic_arn,
)
from imds_enforcer.domain.report import Severity
from imds_enforcer.domain.settings import Settings, SettingsError, split_list
from infra.constructs.guardrails import SCP_TARGET, GuardrailsMode

# The values CloudWatch Logs accepts for a log group's retention (PutRetentionPolicy).
LogRetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653
]

# Deliberately simple: catches typos and stray separators; SNS sends a confirmation mail that proves the rest.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
# A key ARN, not an alias: an IAM policy grants kms:Decrypt on keys; an alias ARN there would match nothing.
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,128}$")
# Slack's ids: a workspace (team) is T..., a channel C... (or G..., older private channels). Upper case only.
_SLACK_WORKSPACE_ID = re.compile(r"^T[A-Z0-9]{8,11}$")
_SLACK_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{8,11}$")

# "off", or where the guardrail Deny statements go: an IAM managed policy, or a service control policy.
GuardrailsSetting = Literal["off", "iam", "scp"]

# The stack's own resources are CloudFormation tokens at synth time; the settings model validates these stand-ins.
PLACEHOLDER_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:imds-enforcer-placeholder"
PLACEHOLDERS = {
    "REPORT_TOPIC_ARN": PLACEHOLDER_TOPIC_ARN,
    "LEDGER_TABLE_NAME": "imds-enforcer-placeholder",
    "CALLER_ANALYSIS_DOCUMENT": "imds-enforcer-placeholder",
    # A StackSet parameter in the member template.
    "ORGANIZATIONAL_UNIT": "ou-abcd-placeholder",
}
PLACEHOLDER_OU = PLACEHOLDERS["ORGANIZATIONAL_UNIT"]

# "account": one stack per region in one account (cdk deploy). "organization": the StackSet path, run from the
# management account or a delegated administrator (see infra.organization).
DeploymentMode = Literal["account", "organization"]


class ConfigError(ValueError):
    """The deploy configuration is invalid; the message names the cdk.json context key."""


def partition_of(region: str) -> str:
    """The partition of a region, as a plain string for documents built in Python (``Aws.PARTITION`` is a token)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


# cdk.json key -> runtime setting name, for every setting a deployment may choose.
RUNTIME_KEYS = {Settings.context_key(name): name for name in Settings.deploy_settable()}


def _describe(location: tuple[int | str, ...], value: object, message: str) -> str:
    if location and location[0] == "runtime" and len(location) > 1:
        location = (Settings.context_key(str(location[1])), *location[2:])
    key, *rest = location
    where = f" (item {'.'.join(str(part) for part in rest)})" if rest else ""
    return f'cdk.json context "{key}"{where}: {value!r}: {message}'


class DeployConfig(BaseModel):
    """What a platform team chooses when deploying; field names are the cdk.json context keys."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    # The Lambdas' runtime settings, declared once in their own model; cdk.json names each in lower case.
    runtime: Settings = Field(default_factory=Settings)
    regions: Annotated[list[str], Field(min_length=1)] = ["us-east-1"]
    account: Annotated[str | None, Field(pattern=r"^\d{12}$")] = None
    notification_emails: list[str] = []
    gate_schedule_hours: Annotated[int, Field(ge=1, le=168)] = 6
    log_retention_days: LogRetentionDays = 90
    gate_memory_mb: Annotated[int, Field(ge=128, le=10240)] = 1024
    # A Lambda runs for at most 15 minutes; under 2 leaves no time once the handler keeps its deadline margin.
    gate_timeout_minutes: Annotated[int, Field(ge=2, le=15)] = 15
    # Only when the Slack webhook secret (the runtime setting SLACK_WEBHOOK_SECRET) is encrypted with a customer
    # managed key: the notifier may then decrypt with it.
    slack_webhook_secret_kms_key_arn: str = ""
    # The Slack channel AWS Chatbot posts the report topic to: both set, or neither (no chat channel). The
    # workspace must first be authorized in the Chatbot console. (The channel is validated even when absent, so a
    # workspace without a channel fails instead of deploying nothing.)
    slack_workspace_id: str = ""
    slack_channel_id: Annotated[str, Field(validate_default=True)] = ""
    # E-mail subscribers receive reports whose most severe finding is at least this (alarms always).
    email_min_severity: Severity = Severity.INFO
    # IMDSv2 guardrails (Deny-only policies): "iam" deploys a customer managed policy to attach to principals,
    # "scp" a service control policy on scp_target_ids (deploy from the management account or a delegated
    # administrator). Created once, in the stack of the first region (see guardrails_region).
    guardrails: GuardrailsSetting = "off"
    guardrail_max_hop_limit: Annotated[int, Field(ge=1, le=64)] = DEFAULT_MAX_HOP_LIMIT
    # Deny every call signed with role credentials fetched over IMDSv1 (ec2:RoleDelivery < 2). That breaks every
    # workload still using IMDSv1, so switch it on only once the usage gate reports zero IMDSv1 use fleet-wide.
    guardrail_role_delivery: bool = False
    # The only principals that may create or change the service's roles and functions (the guardrails' statement
    # ProtectServiceRoles): whoever deploys this stack. Default: service-managed StackSets' execution roles.
    guardrail_deployment_role_arns: Annotated[list[str], Field(validate_default=True)] = list(
        DEFAULT_DEPLOYMENT_ROLE_ARNS
    )
    # Roles (or ArnLike patterns) the guardrails never stop, besides the service's own; same partition as regions[0].
    break_glass_role_arns: list[str] = []
    # Roots (r-...), OUs (ou-...-...) or accounts the SCP is attached to; required when guardrails is "scp".
    # (Validated even when absent: "scp" without targets must fail, not deploy an SCP attached to nothing.)
    scp_target_ids: Annotated[list[str], Field(validate_default=True)] = []
    # Organization mode: the same enforcer in every account of the target OUs (and every account that joins them
    # later) and every region above, through a service-managed CloudFormation StackSet; reports also reach a
    # topic in the security account (central_reports_account, in regions[0]), where the e-mail subscriptions, the
    # Slack notifier and the chat channel then live. The org keys are validated even when absent: organization
    # mode without them must fail, not deploy a StackSet that targets nothing.
    deployment: DeploymentMode = "account"
    organization_id: Annotated[str, Field(validate_default=True)] = ""
    stackset_target_ou_ids: Annotated[list[str], Field(validate_default=True)] = []
    central_reports_account: Annotated[str, Field(validate_default=True)] = ""
    # SELF from the management account; DELEGATED_ADMIN from a delegated administrator for StackSets.
    stackset_call_as: Literal["self", "delegated_admin"] = "self"
    # How a StackSet operation rolls out: regions one after another or in parallel, how many accounts at once (per
    # region), and how many may fail (per region) before the operation stops.
    stackset_region_concurrency: Literal["parallel", "sequential"] = "parallel"
    stackset_max_concurrent_percentage: Annotated[int, Field(ge=1, le=100)] = 25
    stackset_failure_tolerance_percentage: Annotated[int, Field(ge=0, le=100)] = 10
    # The read-only role in every member account that `imds-enforcer audit --org` assumes.
    audit_role_name: str = AUDIT_ROLE_NAME

    @model_validator(mode="before")
    @classmethod
    def _compose_runtime(cls, data: object) -> object:
        """Lift the runtime settings' keys (``lookback_days``, ...) out of the flat context into ``runtime``."""
        if not isinstance(data, Mapping) or "runtime" in data:
            return data
        values = dict(data)
        values["runtime"] = {RUNTIME_KEYS[key]: values.pop(key) for key in list(values) if key in RUNTIME_KEYS}
        return values

    @field_validator(
        "regions",
        "notification_emails",
        "guardrail_deployment_role_arns",
        "break_glass_role_arns",
        "scp_target_ids",
        "stackset_target_ou_ids",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return split_list(value)

    @field_validator("log_retention_days", mode="before")
    @classmethod
    def _retention(cls, value: object) -> object:
        # A Literal of ints is strict about type, so turn -c's "30" into 30 first.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("account", mode="before")
    @classmethod
    def _account(cls, value: object) -> object:
        # cdk.json may say null, and -c account= may be empty: both mean "the CLI's default account".
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return str(value).strip() if isinstance(value, int) else value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if not _REGION.match(region):
                raise ValueError(f"{region!r} is not an AWS region name")
        if len(set(value)) != len(value):
            raise ValueError("a region is listed twice")
        return value

    @field_validator("notification_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _EMAIL.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    @field_validator("slack_webhook_secret_kms_key_arn")
    @classmethod
    def _kms_key(cls, value: str, info: ValidationInfo) -> str:
        if value and not _KMS_KEY_ARN.match(value):
            raise ValueError("is not a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>; not an alias)")
        # A field validator (not a model one) so the error names this key; the runtime settings are validated first.
        runtime = info.data.get("runtime")
        if value and (runtime is None or not runtime.SLACK_WEBHOOK_SECRET):
            raise ValueError("is set, but slack_webhook_secret is empty: there is no Slack notifier to grant it to")
        return value

    @field_validator("slack_workspace_id")
    @classmethod
    def _slack_workspace(cls, value: str) -> str:
        if value and not _SLACK_WORKSPACE_ID.match(value):
            raise ValueError("is not a Slack workspace (team) id: T and 8 to 11 upper-case letters or digits")
        return value

    @field_validator("slack_channel_id")
    @classmethod
    def _slack_channel(cls, value: str, info: ValidationInfo) -> str:
        if value and not _SLACK_CHANNEL_ID.match(value):
            raise ValueError("is not a Slack channel id: C (or G) and 8 to 11 upper-case letters or digits")
        # Declared after the workspace, so validated after it; a bad workspace is absent here, already reported.
        if "slack_workspace_id" in info.data:
            workspace = info.data["slack_workspace_id"]
            if value and not workspace:
                raise ValueError("is set, but slack_workspace_id is empty: set both, or neither")
            if workspace and not value:
                raise ValueError("is empty, but slack_workspace_id is set: set both, or neither")
        return value

    @field_validator("guardrail_deployment_role_arns")
    @classmethod
    def _deployers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        regions: list[str] = info.data.get("regions") or ["us-east-1"]
        partition = partition_of(regions[0])
        if not value:
            raise ValueError("is empty: name the role(s) that deploy this stack, or nobody could ever update it")
        try:
            arns = GuardrailOptions.of(deployment_role_arns=value, partition=partition).deployment_role_arns
        except GuardrailsError as error:
            raise ValueError(str(error)) from None
        return [arn.replace("arn:aws:", f"arn:{partition}:", 1) for arn in arns]

    @field_validator("break_glass_role_arns")
    @classmethod
    def _break_glass(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # The guardrails' own model checks the ARNs; building the document also checks it fits the size limit
        # (the list is what makes it grow). The fields this reads are declared, so validated, before this one.
        regions: list[str] = info.data.get("regions") or ["us-east-1"]
        partition = partition_of(regions[0])
        max_hop_limit: int = info.data.get("guardrail_max_hop_limit", DEFAULT_MAX_HOP_LIMIT)
        role_delivery: bool = info.data.get("guardrail_role_delivery", False)
        document = scp_document if info.data.get("guardrails") == "scp" else iam_policy_document
        deployers: list[str] = info.data.get("guardrail_deployment_role_arns", [])
        try:
            arns = GuardrailOptions.of(exempt_principal_arns=value, partition=partition).exempt_principal_arns
            document(
                max_hop_limit=max_hop_limit,
                exempt_principal_arns=arns,
                include_role_delivery=role_delivery,
                partition=partition,
                # The largest the document gets: every region's roles named exactly
                service_role_arns=service_role_arns(partition=partition, account="*", regions=regions),
                deployment_role_arns=deployers,
            )
        except GuardrailsError as error:
            raise ValueError(str(error)) from None
        # Another partition's ARN would match no principal here: the break-glass role would be denied too.
        foreign = [arn for arn in arns if not arn.startswith(f"arn:{partition}:")]
        if foreign:
            raise ValueError(f"{', '.join(map(repr, foreign))} is not in the partition {partition!r} of {regions[0]}")
        return list(arns)

    @field_validator("scp_target_ids")
    @classmethod
    def _scp_targets(cls, value: list[str], info: ValidationInfo) -> list[str]:
        bad = [target for target in value if not SCP_TARGET.fullmatch(target)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not a root (r-...), OU (ou-...-...) or 12-digit account id")
        mode = info.data.get("guardrails")
        if mode == "scp" and not value:
            raise ValueError('is empty, but guardrails is "scp": name the root, OUs or accounts to attach it to')
        if mode == "iam" and value:
            # Silently ignoring them would leave someone believing an OU is covered.
            raise ValueError(
                'is set, but guardrails is "iam": an IAM managed policy is attached to principals, not OUs'
            )
        return value

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, value: DeploymentMode, info: ValidationInfo) -> DeploymentMode:
        if value == "organization" and info.data.get("guardrails") == "iam":
            # A managed policy per member account and region would only multiply what to attach; the organization's
            # own tool is the SCP, created once by the management account.
            raise ValueError('is "organization", but guardrails is "iam": in organization mode use "scp" (or "off")')
        return value

    @staticmethod
    def _org_only(value: object, info: ValidationInfo, *, what: str) -> None:
        """An organization key: required in organization mode, refused in account mode (it would do nothing)."""
        mode = info.data.get("deployment")
        if mode == "organization" and not value:
            raise ValueError(f'is empty, but deployment is "organization": {what}')
        if mode == "account" and value:
            raise ValueError('is set, but deployment is "account": set deployment to "organization" to use it')

    @field_validator("organization_id")
    @classmethod
    def _organization_id(cls, value: str, info: ValidationInfo) -> str:
        if value and not ORGANIZATION_ID.match(value):
            raise ValueError("is not an organization id (o- and 10 to 32 lower-case letters or digits)")
        cls._org_only(value, info, what="the member accounts' organization (o-...) is what may read the code")
        return value

    @field_validator("stackset_target_ou_ids")
    @classmethod
    def _stackset_targets(cls, value: list[str], info: ValidationInfo) -> list[str]:
        bad = [target for target in value if not is_ou_or_root(target)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not an OU (ou-...-...) or root (r-...) id")
        if len(set(value)) != len(value):
            raise ValueError("an OU is listed twice")
        cls._org_only(value, info, what="name the OUs (or the root) whose accounts get the enforcer")
        return value

    @field_validator("central_reports_account")
    @classmethod
    def _central_account(cls, value: str, info: ValidationInfo) -> str:
        if value and not ACCOUNT_ID.match(value):
            raise ValueError("is not a 12-digit account id")
        cls._org_only(value, info, what="name the security account that receives every member's reports")
        return value

    @field_validator("audit_role_name")
    @classmethod
    def _audit_role_name(cls, value: str) -> str:
        if not ROLE_NAME.match(value):
            raise ValueError("is not an IAM role name (1 to 64 of letters, digits and +=,.@_-)")
        return value

    @classmethod
    def context_keys(cls) -> list[str]:
        """Every key cdk.json's context may hold: the deployment's own fields, then the runtime settings'."""
        return [name for name in cls.model_fields if name != "runtime"] + list(RUNTIME_KEYS)

    @property
    def guardrails_mode(self) -> GuardrailsMode | None:
        """Where the guardrails go (``"iam"``/``"scp"``), or None when they are off."""
        mode = self.guardrails
        return None if mode == "off" else mode

    @property
    def guardrails_region(self) -> str | None:
        """The one region whose stack creates the guardrail policy (the first configured), or None when off.

        IAM policies and SCPs are global, not regional: an SCP's name is unique in the organization, so a second
        regional copy would fail to deploy; identical managed policies per region would only multiply what to attach.
        """
        return None if self.guardrails_mode is None else self.regions[0]

    @property
    def organization_mode(self) -> bool:
        return self.deployment == "organization"

    @property
    def home_region(self) -> str:
        """The first region: the StackSet, the security account's topic and the members' audit role live there."""
        return self.regions[0]

    @property
    def central_report_topic_arn(self) -> str:
        """The security account's topic (organization mode), from its fixed name; empty in account mode."""
        if not self.organization_mode:
            return ""
        return org_report_topic_arn(
            partition=partition_of(self.home_region), region=self.home_region, account=self.central_reports_account
        )

    def member_config(self) -> DeployConfig:
        """What each member account's stack gets in organization mode: the enforcer without the subscriptions, the
        Slack notifier, the chat channel and the guardrails, which live centrally (the security account's topic,
        the management account's SCP). Validated like any configuration."""
        runtime = self.runtime.model_copy(update={"SLACK_WEBHOOK_SECRET": ""})
        return self.model_copy(
            update={
                "runtime": runtime,
                "notification_emails": [],
                "slack_webhook_secret_kms_key_arn": "",
                "slack_workspace_id": "",
                "slack_channel_id": "",
                "guardrails": "off",
                "scp_target_ids": [],
            }
        )

    @property
    def slack_enabled(self) -> bool:
        return self.runtime.SLACK_WEBHOOK_SECRET != ""

    @property
    def chat_channel_enabled(self) -> bool:
        """Whether AWS Chatbot posts to a Slack channel (the validators guarantee both ids, or neither)."""
        return self.slack_channel_id != ""

    @classmethod
    def from_context(cls, context: Mapping[str, object], environ: Mapping[str, str] | None = None) -> DeployConfig:
        """Validate the context; the account defaults to the CLI's ``CDK_DEFAULT_ACCOUNT``.

        Raises ConfigError naming every bad key, e.g. ``cdk.json context "lookback_days": 0: ...``.
        """
        environ = os.environ if environ is None else environ
        keys = (*cls.model_fields, *RUNTIME_KEYS)
        values = {name: context[name] for name in keys if context.get(name) is not None}
        if str(values.get("account", "")).strip() == "" and environ.get("CDK_DEFAULT_ACCOUNT"):
            values["account"] = environ["CDK_DEFAULT_ACCOUNT"]
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(_describe(issue["loc"], issue.get("input"), issue["msg"]) for issue in error.errors())
            raise ConfigError(f"invalid deploy configuration: {problems}") from None

    def lambda_settings(
        self,
        topic_arn: str,
        *,
        ledger_table_name: str = "",
        analyzer_document: str = "",
        organizational_unit: str = "",
    ) -> Settings:
        """What the enforcing Lambdas read: the runtime settings but the Slack notifier's own, with the resources the
        stack creates (its topic, its ledger table, its caller-analysis document when it has one) and, in
        organization mode, the security account's topic and the account's OU; checked by the same model the handlers
        use (through ``from_env``, exactly as a handler reads it).

        Those values may be unresolved CDK tokens: the model then checks a placeholder and the token is put back
        afterwards (``model_copy`` does not re-validate).
        """
        stack_values = {
            "REPORT_TOPIC_ARN": topic_arn,
            "LEDGER_TABLE_NAME": ledger_table_name,
            "CALLER_ANALYSIS_DOCUMENT": analyzer_document,
            "ORGANIZATIONAL_UNIT": organizational_unit,
        }
        checked = {
            name: PLACEHOLDERS[name] if cdk.Token.is_unresolved(value) else value
            for name, value in stack_values.items()
        }
        env = {name: value for name, value in self.runtime.to_env().items() if name not in Settings.SLACK_NOTIFIER_ONLY}
        env["CENTRAL_REPORT_TOPIC_ARN"] = self.central_report_topic_arn
        try:
            settings = Settings.from_env({**env, **checked})
        except SettingsError as error:
            raise ConfigError(f"the Lambda environment built from cdk.json context is invalid: {error}") from None
        return settings.model_copy(update=stack_values)

    def lambda_environment(
        self,
        topic_arn: str,
        *,
        ledger_table_name: str = "",
        analyzer_document: str = "",
        organizational_unit: str = "",
    ) -> dict[str, str]:
        """The enforcing Lambdas' environment (empty values dropped: the runtime reads them as defaults)."""
        settings = self.lambda_settings(
            topic_arn,
            ledger_table_name=ledger_table_name,
            analyzer_document=analyzer_document,
            organizational_unit=organizational_unit,
        )
        return {name: value for name, value in settings.to_env().items() if value != ""}

    def slack_environment(self) -> dict[str, str]:
        """The Slack notifier's environment: the secret's name or ARN (never the URL), and nothing else."""
        env = self.runtime.to_env()
        return {name: env[name] for name in sorted(Settings.SLACK_NOTIFIER_ONLY)}

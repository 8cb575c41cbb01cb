"""Runtime settings: one pydantic model whose field names are the environment variable names.

This model is the one declaration of every runtime setting: its name, default and bounds. Handlers read it from the
environment when they are called (never at import); the CDK app's ``DeployConfig`` composes it, reading each
setting from cdk.json under its lower-case name (``LOOKBACK_DAYS`` is ``lookback_days``), and builds each Lambda's
environment from it, so a bad value fails synth with the key's name, and the Lambda reads exactly what was checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

SERVICE_TAG_PREFIX = "imdsv2-enforcer:"
ENFORCED_AT_TAG = "imdsv2-enforcer:enforced-at"
ENFORCED_BY_TAG = "imdsv2-enforcer:enforced-by"
# When the gate raised a container host's hop limit to 2 (tokens left optional): who changed it, and when.
PREPARED_AT_TAG = "imdsv2-enforcer:prepared-at"
# The IAM path of the service's own roles: CloudTrail's sessionIssuer.arn carries it, so the launch watch can tell
# the service's own calls (a rollback) from a person's, whatever name CloudFormation generated for the role.
SERVICE_ROLE_PATH = "/imds-enforcer/"


class EnforcementMode(StrEnum):
    FLAG = "flag"
    FIX = "fix"


class CallerAnalysis(StrEnum):
    """Which process makes a blocked instance's IMDSv1 calls (ImdsPacketAnalyzer through SSM Run Command).

    `off`: nothing; `read`: attach the results of analyses already run (no command is sent: the CLI audit's mode);
    `run`: also select blocked instances, tag them and start the analyzer on them."""

    OFF = "off"
    READ = "read"
    RUN = "run"


# What Secrets Manager accepts as a secret name, and a secret's ARN (with or without the random 6-character suffix).
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")

TagKey = Annotated[str, Field(min_length=1, max_length=128)]


def split_list(value: object) -> object:
    """A list as a list, a JSON list string (``-c key='["a","b"]'``) or a comma-separated string (``a,b``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value  # the list validator reports it, naming the setting
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseModel):
    """Every setting has a safe default: a handler runs with none of them set (flag mode, no changes)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    # Set by the stack itself (the topic it creates, the path of the roles it creates): not a cdk.json key.
    SET_BY_STACK: ClassVar[frozenset[str]] = frozenset(
        {
            "REPORT_TOPIC_ARN",
            "SERVICE_ROLE_PATH",
            "LEDGER_TABLE_NAME",
            "CALLER_ANALYSIS_DOCUMENT",
            "SWEEP_STATE_BUCKET",
            "CONTINUATION_SCHEDULE_GROUP",
            "CONTINUATION_ROLE_ARN",
            "CONTINUATION_DEAD_LETTER_ARN",
            "CENTRAL_REPORT_TOPIC_ARN",
            "ORGANIZATIONAL_UNIT",
        }
    )
    # Set by the stack for the usage gate only: the resources of its continuation.
    GATE_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"SWEEP_STATE_BUCKET", "CONTINUATION_SCHEDULE_GROUP", "CONTINUATION_ROLE_ARN", "CONTINUATION_DEAD_LETTER_ARN"}
    )
    # Read by the Slack notifier only; the enforcing functions get every other setting.
    SLACK_NOTIFIER_ONLY: ClassVar[frozenset[str]] = frozenset({"SLACK_WEBHOOK_SECRET"})

    ENFORCEMENT_MODE: EnforcementMode = EnforcementMode.FLAG
    REPORT_TOPIC_ARN: Annotated[
        str, Field(pattern=r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256})?$")
    ] = ""
    LOOKBACK_DAYS: Annotated[int, Field(ge=1, le=455)] = 14
    EXEMPT_TAG_KEY: Annotated[str, Field(min_length=1, max_length=128)] = "imdsv2-exempt"
    ROLLBACK_ON_REJECTED: bool = False
    # Name or ARN of the Secrets Manager secret holding the Slack webhook URL (never the URL itself); empty: no Slack.
    SLACK_WEBHOOK_SECRET: str = ""
    # Extra tag keys (beyond the built-in EKS/ECS/Kubernetes ones) that mark a container host.
    CONTAINER_HOST_TAG_KEYS: tuple[TagKey, ...] = ()
    # Calls made by a role under this IAM path are the service's own (rollbacks), not regressions.
    SERVICE_ROLE_PATH: Annotated[str, Field(pattern=r"^/([A-Za-z0-9+=,.@_-]+/)*$")] = SERVICE_ROLE_PATH
    # The usage gate.
    WATCH_DAYS: Annotated[int, Field(ge=1, le=63)] = 14
    COVERAGE_MIN_RATIO: Annotated[float, Field(gt=0, le=1)] = 0.9
    # An instance must have run on at least this many days of the window (a weekday-only or nightly-stopped
    # instance qualifies on the days it ran; one stopped most of the window does not).
    MIN_RUNNING_DAYS: Annotated[int, Field(ge=1, le=455, validate_default=True)] = 7
    # A container host still making IMDSv1 calls at hop limit 1 gets hop limit 2 (tokens left optional), so the
    # SDKs in its containers can use IMDSv2. Fix mode only.
    PREPARE_CONTAINER_HOSTS: bool = True
    SET_ACCOUNT_DEFAULT: bool = False
    MODIFY_BURST: Annotated[int, Field(ge=1, le=100)] = 100
    MODIFY_RATE_PER_SECOND: Annotated[float, Field(gt=0, le=100)] = 5.0
    DEADLINE_MARGIN_SECONDS: Annotated[int, Field(ge=5, le=600)] = 60
    # Where new instances come from. Opt-in on top of fix mode: a new default template version, and (irreversibly)
    # an AMI's ImdsSupport=v2.0. Launch configurations cannot be changed: they are only ever flagged.
    FIX_LAUNCH_TEMPLATES: bool = False
    FIX_IMAGES: bool = False
    # The stack's state table (what was last reported about each instance, so a restart is reported only when its
    # verdict changed). Empty: no table, every verdict is reported.
    LEDGER_TABLE_NAME: Annotated[str, Field(pattern=r"^([A-Za-z0-9_.-]{3,255})?$")] = ""
    # IMDS doors outside EC2 instances. Opt-in on top of fix mode: SageMaker notebooks (only stopped ones: the API
    # refuses a running one) and Lightsail instances. Elastic Beanstalk, Batch, EKS, ECS and EMR are only flagged.
    FIX_SAGEMAKER_NOTEBOOKS: bool = False
    FIX_LIGHTSAIL_INSTANCES: bool = False
    # The caller analysis of blocked instances (ImdsPacketAnalyzer through SSM Run Command): off, read or run; at
    # most this many new instances a run, each traced this many minutes; the stack's own command document.
    CALLER_ANALYSIS: CallerAnalysis = CallerAnalysis.OFF
    CALLER_ANALYSIS_MAX_INSTANCES: Annotated[int, Field(ge=1, le=50)] = 5
    CALLER_ANALYSIS_MINUTES: Annotated[int, Field(ge=1, le=30)] = 10
    CALLER_ANALYSIS_DOCUMENT: Annotated[str, Field(pattern=r"^([a-zA-Z0-9_.-]{3,128})?$")] = ""
    # The usage gate's continuation: when a run stops for its time budget with work left, the sweep goes on at once
    # in a new run (an EventBridge Scheduler one-time schedule), from the plan it left in the sweep bucket. At most
    # this many continuations per sweep; 0 leaves the rest to the next scheduled sweep.
    MAX_CONTINUATIONS: Annotated[int, Field(ge=0, le=100)] = 24
    # Set by the stack (empty: no continuation, as with MAX_CONTINUATIONS=0).
    SWEEP_STATE_BUCKET: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$")] = ""
    CONTINUATION_SCHEDULE_GROUP: Annotated[str, Field(pattern=r"^([0-9A-Za-z_.-]{1,64})?$")] = ""
    CONTINUATION_ROLE_ARN: Annotated[
        str, Field(pattern=r"^(arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512})?$")
    ] = ""
    CONTINUATION_DEAD_LETTER_ARN: Annotated[
        str, Field(pattern=r"^(arn:aws[a-z-]*:sqs:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,80})?$")
    ] = ""
    # Organization mode (set by the StackSet's member template): every report also goes to the security account's
    # topic, and carries the OU (or root) the StackSet deployed this account through. Empty: a stand-alone account.
    CENTRAL_REPORT_TOPIC_ARN: Annotated[
        str, Field(pattern=r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256})?$")
    ] = ""
    ORGANIZATIONAL_UNIT: Annotated[str, Field(pattern=r"^(ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}|r-[a-z0-9]{4,32})?$")] = ""
    # The central exemption list (domain/exemptions.py): the name of an SSM Parameter Store parameter holding it. Set,
    # it replaces the exemption tag: only the instances it names are exempt, until their expiry dates. Empty: the tag.
    EXEMPTION_PARAMETER: Annotated[
        str, Field(pattern=r"^(/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$", max_length=1011)
    ] = ""

    # The list as read for the current run (Settings.with_exemptions): not an environment variable.
    _exemptions: object = PrivateAttr(default=None)

    @field_validator("CONTAINER_HOST_TAG_KEYS", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("SLACK_WEBHOOK_SECRET")
    @classmethod
    def _secret(cls, value: str) -> str:
        if value and not (_SECRET_ARN.match(value) or (_SECRET_NAME.match(value) and not value.startswith("arn:"))):
            raise ValueError("is neither a Secrets Manager secret name nor a secret ARN")
        return value

    @field_validator("MIN_RUNNING_DAYS")
    @classmethod
    def _running_days_fit_the_window(cls, value: int, info: ValidationInfo) -> int:
        # LOOKBACK_DAYS is declared (so validated) first; when it is invalid, its own error says so.
        lookback = info.data.get("LOOKBACK_DAYS")
        if lookback is not None and value > lookback:
            raise ValueError(f"is more than LOOKBACK_DAYS={lookback}: no instance could ever qualify")
        return value

    @model_validator(mode="after")
    def _continuation_complete(self) -> Settings:
        # All three or none: state without a schedule (or a schedule without its state) would strand a sweep.
        parts = {
            "SWEEP_STATE_BUCKET": self.SWEEP_STATE_BUCKET,
            "CONTINUATION_SCHEDULE_GROUP": self.CONTINUATION_SCHEDULE_GROUP,
            "CONTINUATION_ROLE_ARN": self.CONTINUATION_ROLE_ARN,
        }
        if any(parts.values()) and not all(parts.values()):
            missing = ", ".join(name for name, value in parts.items() if not value)
            raise ValueError(f"the gate's continuation needs {missing} as well")
        return self

    @property
    def continuation_enabled(self) -> bool:
        return bool(self.SWEEP_STATE_BUCKET) and self.MAX_CONTINUATIONS > 0

    @classmethod
    def context_key(cls, name: str) -> str:
        """The cdk.json context key of a setting: its name in lower case."""
        return name.lower()

    @classmethod
    def deploy_settable(cls) -> list[str]:
        """The settings a deployment chooses in cdk.json (all but the ones the stack sets itself)."""
        return [name for name in cls.model_fields if name not in cls.SET_BY_STACK]

    @property
    def fix(self) -> bool:
        return self.ENFORCEMENT_MODE is EnforcementMode.FIX

    def with_exemptions(self, exemptions: object) -> Settings:
        """These settings with the central exemption list read for this run (domain/exemptions.CentralExemptions)."""
        copy = self.model_copy()
        copy._exemptions = exemptions
        return copy

    @property
    def exemptions(self) -> object:
        """The central exemption list of this run, or None (the exemption tag decides)."""
        return self._exemptions

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build from an environment mapping; unknown variables are ignored, empty ones mean the default."""
        names = cls.model_fields.keys()
        values = {name: environ[name] for name in names if environ.get(name, "").strip() != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in issue['loc'])}={issue.get('input')!r}: {issue['msg']}"
                for issue in error.errors()
            )
            raise SettingsError(f"invalid setting: {problems}") from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for the CDK app)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, list):
                env[name] = ",".join(str(item) for item in value)
            elif isinstance(value, bool):
                env[name] = "true" if value else "false"
            else:
                env[name] = str(value)
        return env

"""IMDS doors outside the EC2 instances the gate sweeps: pure decisions, one `resource_type` each. No boto3 here.

- SageMaker notebook instances (`MinimumInstanceMetadataServiceVersion`): flagged at "1" (or unset: the create
  default is IMDSv1); opt-in fix (FIX_SAGEMAKER_NOTEBOOKS, fix mode) sets "2", which the API allows only on a stopped
  (or failed) notebook: a running one is flagged and fixed by a run that finds it stopped.
- Lightsail instances (`metadataOptions.httpTokens`): flagged when optional; opt-in fix (FIX_LIGHTSAIL_INSTANCES, fix
  mode) sends `httpTokens=required` explicitly (the API resets an omitted httpTokens to optional).
- Elastic Beanstalk environments (`aws:autoscaling:launchconfiguration` `DisableIMDSv1`): flagged unless "true";
  never changed here (an option update replaces the environment's instances); the finding names the option.
- Batch compute environments, EKS managed node groups, ECS capacity providers, EMR clusters: each launches EC2
  instances from a launch template (Batch, EKS, ECS through its Auto Scaling group) or a security configuration
  (EMR). The workflow resolves that source; these decisions flag the door when the source accepts IMDSv1, naming it
  and the way to close it, with the same verdicts as launch templates (flagged, exempt by the door's own tag, or
  nothing). The doors themselves are never changed here; a template the account owns is fixed by the launch
  template check (FIX_LAUNCH_TEMPLATES), which runs first in the gate's sweep.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imds_enforcer.domain.launch_sources import MetadataFacts
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import Settings

SAGEMAKER_NOTEBOOK = "sagemaker_notebook"
LIGHTSAIL_INSTANCE = "lightsail_instance"
BEANSTALK_ENVIRONMENT = "elastic_beanstalk_environment"
BATCH_COMPUTE_ENVIRONMENT = "batch_compute_environment"
EKS_NODEGROUP = "eks_nodegroup"
ECS_CAPACITY_PROVIDER = "ecs_capacity_provider"
EMR_CLUSTER = "emr_cluster"
DOOR_TYPES = (
    SAGEMAKER_NOTEBOOK,
    LIGHTSAIL_INSTANCE,
    BEANSTALK_ENVIRONMENT,
    BATCH_COMPUTE_ENVIRONMENT,
    EKS_NODEGROUP,
    ECS_CAPACITY_PROVIDER,
    EMR_CLUSTER,
)
# Doors that launch EC2 instances in this account: while one allows IMDSv1, the launch guardrail (deny RunInstances
# without HttpTokens=required) would break it. SageMaker notebooks and Lightsail run outside the account's EC2.
EC2_LAUNCHING_DOORS = (
    BEANSTALK_ENVIRONMENT,
    BATCH_COMPUTE_ENVIRONMENT,
    EKS_NODEGROUP,
    ECS_CAPACITY_PROVIDER,
    EMR_CLUSTER,
)
DOOR_TITLES = {
    SAGEMAKER_NOTEBOOK: "SageMaker notebook instances",
    LIGHTSAIL_INSTANCE: "Lightsail instances",
    BEANSTALK_ENVIRONMENT: "Elastic Beanstalk environments",
    BATCH_COMPUTE_ENVIRONMENT: "Batch compute environments",
    EKS_NODEGROUP: "EKS managed node groups",
    ECS_CAPACITY_PROVIDER: "ECS capacity providers",
    EMR_CLUSTER: "EMR clusters",
}

IMDS_V2 = "2"
# UpdateNotebookInstance is accepted only in these states (SageMaker: "Status (X) not in ([Stopped, Failed])").
NOTEBOOK_UPDATABLE = frozenset({"Stopped", "Failed"})
NOTEBOOK_GONE = frozenset({"Deleting"})
LIGHTSAIL_GONE = frozenset({"terminated", "shutting-down"})
BEANSTALK_GONE = frozenset({"Terminated", "Terminating"})
BEANSTALK_NAMESPACE = "aws:autoscaling:launchconfiguration"
BEANSTALK_OPTION = "DisableIMDSv1"


def tag_map(items: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None) -> dict[str, str]:
    """Tags as AWS spells them across services: a dict, [{Key, Value}] or [{key, value}]."""
    if isinstance(items, Mapping):
        return {str(key): str(value) for key, value in items.items()}
    tags: dict[str, str] = {}
    for tag in items or ():
        key = tag.get("Key", tag.get("key"))
        if key is not None:
            tags[str(key)] = str(tag.get("Value", tag.get("value", "")) or "")
    return tags


def _exemption(tags: Mapping[str, str], settings: Settings) -> str | None:
    if settings.EXEMPT_TAG_KEY not in tags:
        return None
    value = tags[settings.EXEMPT_TAG_KEY]
    return f"carries the exemption tag {settings.EXEMPT_TAG_KEY}" + (f" ({value})" if value else "")


def _why_left(settings: Settings, opt_in: str) -> str:
    return "flag mode" if not settings.fix else f"{opt_in} is off"


# --- SageMaker notebook instances --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotebookFacts:
    name: str
    arn: str
    status: str
    minimum_version: str | None  # None: not set, which SageMaker's create treats as IMDSv1
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> NotebookFacts:
        config = item.get("InstanceMetadataServiceConfiguration") or {}
        version = config.get("MinimumInstanceMetadataServiceVersion")
        return cls(
            name=str(item["NotebookInstanceName"]),
            arn=str(item.get("NotebookInstanceArn", "")),
            status=str(item.get("NotebookInstanceStatus", "Unknown")),
            minimum_version=str(version) if version not in (None, "") else None,
            tags=dict(tags or {}),
        )

    @property
    def accepts_imdsv1(self) -> bool:
        return self.minimum_version != IMDS_V2 and self.status not in NOTEBOOK_GONE

    def details(self) -> dict[str, str]:
        return {
            "status": self.status,
            "minimum_imds_version": self.minimum_version or "not set (IMDSv1)",
            "arn": self.arn,
        }


@dataclass(frozen=True, slots=True)
class NotebookPlan:
    notebook: NotebookFacts


def notebook_decision(notebook: NotebookFacts, settings: Settings) -> Finding | NotebookPlan | None:
    if not notebook.accepts_imdsv1:
        return None
    what = (
        f"SageMaker notebook instance allows IMDSv1 (MinimumInstanceMetadataServiceVersion "
        f"{notebook.minimum_version or 'not set, IMDSv1 by default'})"
    )
    exempt = _exemption(notebook.tags, settings)
    if exempt:
        return _finding(SAGEMAKER_NOTEBOOK, notebook.name, Action.EXEMPT, f"{exempt}; {what}", notebook.details())
    if not (settings.fix and settings.FIX_SAGEMAKER_NOTEBOOKS):
        why = _why_left(settings, "FIX_SAGEMAKER_NOTEBOOKS")
        return _finding(
            SAGEMAKER_NOTEBOOK,
            notebook.name,
            Action.FLAGGED,
            f"{what}: set it to 2 (UpdateNotebookInstance, while the notebook is stopped) ({why}, left unchanged)",
            notebook.details(),
        )
    if notebook.status not in NOTEBOOK_UPDATABLE:
        return _finding(
            SAGEMAKER_NOTEBOOK,
            notebook.name,
            Action.FLAGGED,
            f"{what}; it is {notebook.status}: SageMaker changes it only while it is stopped, so a run that finds it "
            "stopped sets version 2 (or stop it, and the next run does)",
            notebook.details(),
        )
    return NotebookPlan(notebook)


def enforced_notebook_finding(notebook: NotebookFacts) -> Finding:
    return _finding(
        SAGEMAKER_NOTEBOOK,
        notebook.name,
        Action.ENFORCED,
        f"MinimumInstanceMetadataServiceVersion set from {notebook.minimum_version or 'not set'} to 2 while the "
        f"notebook was {notebook.status}: it requires IMDSv2 from its next start",
        {
            **notebook.details(),
            "minimum_imds_version": IMDS_V2,
            "previous_minimum_imds_version": notebook.minimum_version or "not set",
        },
    )


# --- Lightsail instances -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LightsailFacts:
    name: str
    arn: str
    state: str
    http_tokens: str | None
    http_endpoint: str | None
    hop_limit: int | None
    blueprint: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> LightsailFacts:
        options = item.get("metadataOptions") or {}
        hop = options.get("httpPutResponseHopLimit")
        return cls(
            name=str(item["name"]),
            arn=str(item.get("arn", "")),
            state=str((item.get("state") or {}).get("name", "unknown")),
            http_tokens=options.get("httpTokens"),
            http_endpoint=options.get("httpEndpoint"),
            hop_limit=int(hop) if hop is not None else None,
            blueprint=str(item.get("blueprintId", "")),
            tags=tag_map(item.get("tags")),
        )

    @property
    def accepts_imdsv1(self) -> bool:
        # Lightsail's default is "either IMDSv1 or IMDSv2"; a disabled endpoint answers neither.
        return self.http_tokens != "required" and self.http_endpoint != "disabled" and self.state not in LIGHTSAIL_GONE

    def details(self) -> dict[str, str]:
        return {
            "state": self.state,
            "http_tokens": self.http_tokens or "not set (optional)",
            "blueprint": self.blueprint,
            "arn": self.arn,
        }


@dataclass(frozen=True, slots=True)
class LightsailPlan:
    instance: LightsailFacts


def lightsail_decision(instance: LightsailFacts, settings: Settings) -> Finding | LightsailPlan | None:
    if not instance.accepts_imdsv1:
        return None
    what = f"Lightsail instance accepts IMDSv1 (httpTokens {instance.http_tokens or 'not set'})"
    exempt = _exemption(instance.tags, settings)
    if exempt:
        return _finding(LIGHTSAIL_INSTANCE, instance.name, Action.EXEMPT, f"{exempt}; {what}", instance.details())
    if not (settings.fix and settings.FIX_LIGHTSAIL_INSTANCES):
        why = _why_left(settings, "FIX_LIGHTSAIL_INSTANCES")
        return _finding(
            LIGHTSAIL_INSTANCE,
            instance.name,
            Action.FLAGGED,
            f"{what}: require IMDSv2 with UpdateInstanceMetadataOptions httpTokens=required once its software uses "
            f"IMDSv2 (watch its MetadataNoToken metric) ({why}, left unchanged)",
            instance.details(),
        )
    return LightsailPlan(instance)


def enforced_lightsail_finding(instance: LightsailFacts, operation_status: str = "") -> Finding:
    details = {
        **instance.details(),
        "http_tokens": "required",
        "previous_http_tokens": instance.http_tokens or "not set",
    }
    if operation_status:
        details["operation_status"] = operation_status
    return _finding(
        LIGHTSAIL_INSTANCE,
        instance.name,
        Action.ENFORCED,
        "httpTokens set to required (UpdateInstanceMetadataOptions; hop limit and endpoint left as they were): "
        "the instance answers IMDSv2 only",
        details,
    )


# --- Elastic Beanstalk environments ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvironmentFacts:
    application: str
    name: str
    environment_id: str
    status: str
    platform: str
    disable_imdsv1: str | None  # the option's value; None: not set (Elastic Beanstalk's default, false)

    @classmethod
    def from_api(cls, item: Mapping[str, Any], option_settings: Iterable[Mapping[str, Any]] = ()) -> EnvironmentFacts:
        value = next(
            (
                option.get("Value")
                for option in option_settings
                if option.get("Namespace") == BEANSTALK_NAMESPACE and option.get("OptionName") == BEANSTALK_OPTION
            ),
            None,
        )
        return cls(
            application=str(item.get("ApplicationName", "")),
            name=str(item["EnvironmentName"]),
            environment_id=str(item.get("EnvironmentId", "")),
            status=str(item.get("Status", "Unknown")),
            platform=str(item.get("PlatformArn") or item.get("SolutionStackName") or ""),
            disable_imdsv1=str(value) if value not in (None, "") else None,
        )

    @property
    def allows_imdsv1(self) -> bool:
        return (self.disable_imdsv1 or "false").lower() != "true" and self.status not in BEANSTALK_GONE


def beanstalk_finding(environment: EnvironmentFacts) -> Finding | None:
    """Only ever flagged: updating the option replaces the environment's instances, which is the owner's call."""
    if not environment.allows_imdsv1:
        return None
    option = f"Namespace={BEANSTALK_NAMESPACE},OptionName={BEANSTALK_OPTION},Value=true"
    return _finding(
        BEANSTALK_ENVIRONMENT,
        environment.name,
        Action.FLAGGED,
        f"Elastic Beanstalk environment lets its instances accept IMDSv1 ({BEANSTALK_NAMESPACE} {BEANSTALK_OPTION} "
        f"is {environment.disable_imdsv1 or 'not set (false)'}): set {BEANSTALK_OPTION} to true, e.g. `aws "
        f"elasticbeanstalk update-environment --environment-name {environment.name} --option-settings {option}`; "
        "never changed here: the update replaces the environment's instances",
        {
            "application": environment.application,
            "environment_id": environment.environment_id,
            "status": environment.status,
            "platform": environment.platform,
            "namespace": BEANSTALK_NAMESPACE,
            "option_name": BEANSTALK_OPTION,
            "option_value": environment.disable_imdsv1 or "not set",
            "set_to": "true",
        },
    )


# --- doors that launch from a launch template or a security configuration -----------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchSource:
    """What a door launches its instances from, as the workflow resolved it."""

    label: str  # e.g. "launch template batch-workers (lt-0abc), version $Default = 3"
    accepts_imdsv1: bool
    setting: str  # e.g. "HttpTokens optional"
    fix: str  # how to close the door
    details: Mapping[str, str] = field(default_factory=dict)


def template_source(
    *,
    template_id: str,
    template_name: str,
    requested_version: str,
    resolved: Mapping[str, Any] | None,
    fix: str,
    owner: str = "launch template",
) -> LaunchSource:
    """A launch template version (a DescribeLaunchTemplateVersions item), or None when it does not exist."""
    name = f"{template_name} ({template_id})" if template_name and template_id else template_name or template_id
    details = {
        "launch_template_id": template_id,
        "launch_template_name": template_name,
        "launch_template_version": requested_version,
    }
    if resolved is None:
        return LaunchSource(
            label=f"{owner} {name}, version {requested_version}",
            accepts_imdsv1=True,
            setting="that version does not exist (launches fail, or use what the service falls back to)",
            fix=fix,
            details={**details, "http_tokens": "unknown"},
        )
    number = str(resolved.get("VersionNumber", ""))
    metadata = MetadataFacts.from_api((resolved.get("LaunchTemplateData") or {}).get("MetadataOptions"))
    version = requested_version if requested_version == number else f"{requested_version} = {number}"
    return LaunchSource(
        label=f"{owner} {name}, version {version}",
        accepts_imdsv1=metadata.accepts_imdsv1,
        setting=f"HttpTokens {metadata.tokens_label}",
        fix=fix,
        details={**details, "resolved_version": number, "http_tokens": metadata.tokens_label},
    )


@dataclass(frozen=True, slots=True)
class LaunchDoor:
    """A Batch compute environment, EKS node group, ECS capacity provider or EMR cluster."""

    resource_type: str
    resource_id: str
    title: str  # e.g. "Batch compute environment gpu-jobs"
    tags: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)


def launch_door_decision(door: LaunchDoor, source: LaunchSource, settings: Settings) -> Finding | None:
    """Flagged (or exempt) when its launch source accepts IMDSv1; the door itself is never changed here."""
    if not source.accepts_imdsv1:
        return None
    what = f"{door.title} launches instances that accept IMDSv1: {source.label} ({source.setting})"
    details = {**door.details, **source.details}
    exempt = _exemption(door.tags, settings)
    if exempt:
        return _finding(door.resource_type, door.resource_id, Action.EXEMPT, f"{exempt}; {what}", details)
    return _finding(door.resource_type, door.resource_id, Action.FLAGGED, f"{what}; {source.fix}", details)


# Where each door's fix lives (the finding says it; the README's table too).
BATCH_FIX = (
    "give it a launch template version that requires IMDSv2 (for an own template FIX_LAUNCH_TEMPLATES adds one), "
    "then update the compute environment so new instances use it (Batch resolves $Default/$Latest when the "
    "environment is updated)"
)
BATCH_DEFAULT_FIX = (
    "use an Amazon Linux 2023 image type (ECS_AL2023: IMDSv2 only) or a launch template that requires IMDSv2, or "
    "set the account default to required"
)
EKS_FIX = (
    "update the node group to a launch template version that requires IMDSv2 (UpdateNodegroupVersion; EKS copies "
    "the template, so a version added to it changes nothing until then); never changed here"
)
EKS_DEFAULT_FIX = (
    "create the node group from a launch template that requires IMDSv2 (hop limit 2 for pods): the template EKS "
    "generates cannot be changed"
)
ECS_FIX = (
    "give its Auto Scaling group a launch template (version) that requires IMDSv2 (for an own template "
    "FIX_LAUNCH_TEMPLATES adds one, and a group at $Default or $Latest launches it from then on); the capacity "
    "provider itself is never changed here"
)
EMR_FIX = (
    "launch new clusters with a security configuration whose InstanceMetadataServiceConfiguration has "
    "MinimumInstanceMetadataServiceVersion 2 (EMR 5.32+/6.2+): a running cluster keeps the configuration it "
    "launched with, so it is only flagged"
)


def batch_default_source(image_types: Iterable[str]) -> LaunchSource:
    """A compute environment without a launch template: Batch's own ECS-optimized AMIs (ECS_AL2 unless its
    ec2Configuration names others)."""
    given = sorted(set(image_types))
    types = given or ["ECS_AL2 (Batch's default)"]
    al2023 = bool(given) and all(kind.startswith("ECS_AL2023") for kind in given)
    return LaunchSource(
        label=f"no launch template, Batch's image type {', '.join(types)}",
        accepts_imdsv1=not al2023,
        setting="Amazon Linux 2023 requires IMDSv2 by default"
        if al2023
        else "IMDSv1 allowed unless the account default requires IMDSv2",
        fix=BATCH_DEFAULT_FIX,
        details={"launch_template_id": "", "image_types": ", ".join(types)},
    )


def eks_generated_source(group: str) -> LaunchSource:
    """A node group without a launch template whose generated template could not be read (its group not listed)."""
    return LaunchSource(
        label=f"the launch template EKS generates (Auto Scaling group {group or 'unknown'} not readable)",
        accepts_imdsv1=True,
        setting="EKS's default: HttpTokens optional, hop limit 2",
        fix=EKS_DEFAULT_FIX,
        details={"launch_template_id": "", "auto_scaling_group": group},
    )


def emr_source(configuration_name: str | None, configuration: str | Mapping[str, Any] | None) -> LaunchSource:
    """An EMR cluster's security configuration (its JSON), or no configuration at all."""
    if not configuration_name:
        return LaunchSource(
            label="no security configuration",
            accepts_imdsv1=True,
            setting="EMR's default: IMDSv1 allowed",
            fix=EMR_FIX,
            details={"security_configuration": ""},
        )
    document: Mapping[str, Any]
    if isinstance(configuration, str):
        try:
            loaded = json.loads(configuration)
        except json.JSONDecodeError:
            loaded = {}
        document = loaded if isinstance(loaded, Mapping) else {}
    else:
        document = configuration or {}
    imds = document.get("InstanceMetadataServiceConfiguration") or {}
    version = imds.get("MinimumInstanceMetadataServiceVersion")
    required = str(version) == IMDS_V2
    return LaunchSource(
        label=f"security configuration {configuration_name}",
        accepts_imdsv1=not required,
        setting=f"MinimumInstanceMetadataServiceVersion {version if version is not None else 'not set (1)'}",
        fix=EMR_FIX,
        details={
            "security_configuration": configuration_name,
            "minimum_imds_version": str(version) if version is not None else "not set",
        },
    )


def launch_configuration_source(name: str, options: Mapping[str, Any] | None, fix: str) -> LaunchSource:
    metadata = MetadataFacts.from_api(options)
    return LaunchSource(
        label=f"launch configuration {name}",
        accepts_imdsv1=metadata.accepts_imdsv1,
        setting=f"HttpTokens {metadata.tokens_label}",
        fix="move its Auto Scaling group to a launch template that requires IMDSv2 (launch configurations cannot "
        "change); " + fix,
        details={"launch_configuration": name, "http_tokens": metadata.tokens_label},
    )


def _finding(resource_type: str, resource_id: str, action: Action, reason: str, details: Mapping[str, str]) -> Finding:
    return Finding(
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        reason=reason,
        details={key: value for key, value in details.items() if value is not None},
    )


# Every read the door checks make (the gate's sweep, the launch watch, the CLI audit): the enforcers' policies and the
# organization audit role grant these; the listings take no resource ARN, the rest are scoped where IAM allows.
DOOR_READ_ACTIONS = (
    "sagemaker:ListNotebookInstances",
    "sagemaker:DescribeNotebookInstance",
    "sagemaker:ListTags",
    "lightsail:GetInstances",
    "lightsail:GetInstance",
    "elasticbeanstalk:DescribeEnvironments",
    "elasticbeanstalk:DescribeConfigurationSettings",
    "batch:DescribeComputeEnvironments",
    "eks:ListClusters",
    "eks:ListNodegroups",
    "eks:DescribeNodegroup",
    "ecs:DescribeCapacityProviders",
    "elasticmapreduce:ListClusters",
    "elasticmapreduce:DescribeCluster",
    "elasticmapreduce:DescribeSecurityConfiguration",
)

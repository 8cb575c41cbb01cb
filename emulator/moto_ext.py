"""Teach moto the AWS behaviour it lacks, so the product code runs unchanged against it.

- DescribeInstances filters `metadata-options.*` (moto: NotImplementedError in-process, HTTP 500 on a server).
- ModifyInstanceMetadataOptions keeps the fields a call does not pass (moto replaces the whole block).
- Get/ModifyInstanceMetadataDefaults (moto has neither).
- AMI `ImdsSupport` (moto accepts it in ModifyImageAttribute and RegisterImage, but neither stores nor returns it).
- StartInstances resets LaunchTime, as EC2 does (moto keeps the first one); the primary network interface keeps the
  attach time of the first launch, so an instance's restarts and its first launch can be told apart.
- ModifyInstanceMetadataOptions refuses HttpTokens=optional with UnsupportedOperation while the account default
  enforces IMDSv2 (HttpTokensEnforced=enabled), as EC2 does.
- GetMetricData with the one Metrics Insights query shape the service sends (`SELECT SUM(<metric>) FROM
  SCHEMA("<namespace>", InstanceId) GROUP BY InstanceId ...`): one series per instance, labelled with its id (moto
  sums every datapoint of the account into one series, whatever the query says).
- IMDS doors outside EC2: a Lightsail backend (moto has none: `emulator.moto_lightsail`); SageMaker notebooks'
  `InstanceMetadataServiceConfiguration` and UpdateNotebookInstance; Elastic Beanstalk option settings and
  DescribeConfigurationSettings; ECS DescribeCapacityProviders without names (the API's "all").
- SSM Run Command for the caller analysis: DescribeInstanceInformation (from instances registered as managed),
  SendCommand by InstanceIds reaching only those instances (moto adds every instance of the region), refusing an
  unknown document or an unmanaged instance, and the output an instance's command returns (recorded analyzer output).
- AssumeRole refuses a role that does not exist or does not trust the caller's account (moto grants any role ARN).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.ec2 import utils as ec2_utils
from moto.ec2.models.instances import InstanceBackend, MetadataOptions

METADATA_FILTERS = {
    "metadata-options.http-tokens": "metadata_options.http_tokens",
    "metadata-options.http-endpoint": "metadata_options.http_endpoint",
    "metadata-options.state": "metadata_options.state",
    "metadata-options.instance-metadata-tags": "metadata_options.instance_metadata_tags",
}

_original_modify = InstanceBackend.modify_instance_metadata_options


def _modify_keeping_unset_fields(
    self: InstanceBackend,
    instance_id: str,
    http_tokens: str | None = None,
    hop_limit: int | None = None,
    http_endpoint: str | None = None,
    dry_run: bool | None = False,
    http_protocol: str | None = None,
    metadata_tags: str | None = None,
) -> MetadataOptions:
    current = self.get_instance(instance_id).metadata_options  # raises InvalidInstanceID.NotFound like AWS
    if http_tokens == "optional" and metadata_defaults_of(self).get("HttpTokensEnforced") == "enabled":
        from moto.ec2.exceptions import EC2ClientError

        raise EC2ClientError(
            "UnsupportedOperation",
            "You can't launch instances with IMDSv1 because httpTokensEnforced is enabled for this account. Either "
            "launch the instance with httpTokens=required or contact your account owner to disable "
            "httpTokensEnforced using the ModifyInstanceMetadataDefaults API or the account settings in the EC2 "
            "console.",
        )

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    return _original_modify(
        self,
        instance_id,
        http_tokens=pick(http_tokens, current.http_tokens),
        hop_limit=pick(hop_limit, current.http_put_response_hop_limit),
        http_endpoint=pick(http_endpoint, current.http_endpoint),
        dry_run=dry_run,
        http_protocol=pick(http_protocol, current.http_protocol_ipv6),
        metadata_tags=pick(metadata_tags, current.instance_metadata_tags),
    )


def teach_moto() -> None:
    """Idempotent; call before the first request reaches moto (in the process that runs moto)."""
    ec2_utils.filter_dict_attribute_mapping.update(METADATA_FILTERS)
    InstanceBackend.modify_instance_metadata_options = _modify_keeping_unset_fields  # type: ignore[method-assign]
    teach_metadata_defaults()
    teach_image_imds_support()
    teach_restarts()
    teach_metrics_insights()
    teach_lightsail()
    teach_sagemaker_notebook_imds()
    teach_beanstalk_option_settings()
    teach_ecs_capacity_provider_listing()
    teach_ssm_run_command()
    teach_assume_role_checks()


# GetInstanceMetadataDefaults / ModifyInstanceMetadataDefaults, for the gate's opt-in account default.
# The account-level defaults live on each region's EC2 backend; `ManagedBy` and `ManagedExceptionMessage` can be set
# there by a test (`metadata_defaults_of(backend)["ManagedBy"] = "declarative-policy"`) to stand for an
# organization's declarative policy, which the API itself cannot set.

_DEFAULTS_ATTRIBUTE = "_imds_enforcer_metadata_defaults"
_DEFAULT_FIELDS = (
    "HttpTokens",
    "HttpPutResponseHopLimit",
    "HttpEndpoint",
    "InstanceMetadataTags",
    "HttpTokensEnforced",
)


def metadata_defaults_of(backend: Any) -> dict[str, Any]:
    """The AccountLevel block of one EC2 backend (account and region), created empty (as AWS: nothing set)."""
    if not hasattr(backend, _DEFAULTS_ATTRIBUTE):
        setattr(backend, _DEFAULTS_ATTRIBUTE, {"ManagedBy": "account"})
    defaults: dict[str, Any] = getattr(backend, _DEFAULTS_ATTRIBUTE)
    return defaults


def teach_metadata_defaults() -> None:
    """Idempotent; part of teach_moto()."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses import EC2Response

    def get_instance_metadata_defaults(self: EC2Response) -> ActionResult:
        return ActionResult({"AccountLevel": dict(metadata_defaults_of(self.ec2_backend))})

    def modify_instance_metadata_defaults(self: EC2Response) -> ActionResult:
        defaults = metadata_defaults_of(self.ec2_backend)
        for name in _DEFAULT_FIELDS:
            value = self._get_param(name)
            if value is None:
                continue
            if value in ("no-preference", "-1", -1):  # AWS: clear the preference
                defaults.pop(name, None)
            else:
                defaults[name] = int(value) if name == "HttpPutResponseHopLimit" else value
        return ActionResult({"Return": True})

    EC2Response.get_instance_metadata_defaults = get_instance_metadata_defaults  # type: ignore[attr-defined]
    EC2Response.modify_instance_metadata_defaults = modify_instance_metadata_defaults  # type: ignore[attr-defined]


# AMI ImdsSupport, for the launch-source checks. DescribeImages already writes an Ami's `imds_support` attribute
# (moto serializes by the output shape's member names); only the two calls that set it are missing.

_IMDS_SUPPORT_VALUES = ("v2.0",)


def teach_image_imds_support() -> None:
    """Idempotent; part of teach_moto(). ModifyImageAttribute(ImdsSupport={"Value": "v2.0"}) and RegisterImage(
    ImdsSupport="v2.0") store the value on the AMI; like AWS, any other value is refused and nothing unsets it."""
    from moto.core.responses import ActionResult, EmptyResult
    from moto.ec2.exceptions import InvalidParameterValueError
    from moto.ec2.responses.amis import AmisResponse

    original_modify = getattr(AmisResponse, "_imds_enforcer_original_modify", AmisResponse.modify_image_attribute)
    original_register = getattr(AmisResponse, "_imds_enforcer_original_register", AmisResponse.register_image)

    def value_of(raw: Any) -> str | None:
        value = raw.get("Value") if isinstance(raw, dict) else raw
        if value is None:
            return None
        if value not in _IMDS_SUPPORT_VALUES:
            raise InvalidParameterValueError(f"ImdsSupport={value}")
        return str(value)

    def modify_image_attribute(self: AmisResponse) -> ActionResult:
        value = value_of(self._get_param("ImdsSupport"))
        if value is None:
            return original_modify(self)
        self.error_on_dryrun()
        image = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]  # NotFound like AWS
        image.imds_support = value
        return EmptyResult()

    def register_image(self: AmisResponse) -> ActionResult:
        value = value_of(self._get_param("ImdsSupport"))
        result = original_register(self)
        if value is not None:
            image_id = result.result["ImageId"]  # type: ignore[index]
            self.ec2_backend.describe_images(ami_ids=[image_id])[0].imds_support = value
        return result

    AmisResponse._imds_enforcer_original_modify = original_modify  # type: ignore[attr-defined]
    AmisResponse._imds_enforcer_original_register = original_register  # type: ignore[attr-defined]
    AmisResponse.modify_image_attribute = modify_image_attribute  # type: ignore[method-assign]
    AmisResponse.register_image = register_image  # type: ignore[method-assign]


# StartInstances resets LaunchTime (EC2 documents LaunchTime as "the time that the instance was last launched").


def teach_restarts() -> None:
    """Idempotent; part of teach_moto(). A start of a stopped instance stamps a new LaunchTime; the network
    interfaces (and so the primary interface's attach time, the first launch) stay as they were."""
    from moto.core.utils import utcnow
    from moto.ec2.models.instances import Instance

    original = getattr(Instance, "_imds_enforcer_original_start", Instance.start)

    def start(self: Instance) -> Any:
        previous = original(self)
        if previous.name != "running":
            self.launch_time = utcnow()
        return previous

    Instance._imds_enforcer_original_start = original  # type: ignore[attr-defined]
    Instance.start = start  # type: ignore[method-assign]


# Metrics Insights, for the one query shape the rejection watch sends.

_INSIGHTS_BY_INSTANCE = re.compile(
    r'^SELECT\s+SUM\((?P<metric>\w+)\)\s+FROM\s+SCHEMA\("(?P<namespace>[^"]+)",\s*InstanceId\)\s+GROUP\s+BY\s+InstanceId\b',
    re.IGNORECASE,
)


def teach_metrics_insights() -> None:
    """Idempotent; part of teach_moto(). The queries moto would answer wrongly are answered here, one series per
    instance (label = its id, as Metrics Insights labels GROUP BY series); every other query goes to moto."""
    from moto.cloudwatch.models import CloudWatchBackend

    original = getattr(CloudWatchBackend, "_imds_enforcer_original_get_metric_data", CloudWatchBackend.get_metric_data)

    def get_metric_data(
        self: CloudWatchBackend,
        queries: list[dict[str, Any]],
        start_time: Any,
        end_time: Any,
        scan_by: str = "TimestampAscending",
    ) -> list[dict[str, Any]]:
        ours = [query for query in queries if _INSIGHTS_BY_INSTANCE.match(str(query.get("Expression", "")))]
        others = [query for query in queries if query not in ours]
        results = original(self, others, start_time, end_time, scan_by) if others else []
        for query in ours:
            results.extend(_by_instance(self, query, start_time, end_time))
        return results

    CloudWatchBackend._imds_enforcer_original_get_metric_data = original  # type: ignore[attr-defined]
    CloudWatchBackend.get_metric_data = get_metric_data  # type: ignore[method-assign]


def _by_instance(backend: Any, query: dict[str, Any], start: Any, end: Any) -> list[dict[str, Any]]:
    match = _INSIGHTS_BY_INSTANCE.match(str(query["Expression"]))
    assert match is not None
    period = timedelta(seconds=int(query.get("Period", 300)))
    start = start.replace(microsecond=0)
    end = end.replace(microsecond=0)
    sums: dict[str, dict[Any, float]] = {}
    for datum in backend.get_all_metrics():
        dimensions = {dimension.name: dimension.value for dimension in datum.dimensions}
        if datum.namespace != match["namespace"] or datum.name != match["metric"] or set(dimensions) != {"InstanceId"}:
            continue
        if not start <= datum.timestamp < end:
            continue
        bucket = start + period * ((datum.timestamp - start) // period)
        series = sums.setdefault(str(dimensions["InstanceId"]), {})
        series[bucket] = series.get(bucket, 0.0) + float(getattr(datum, "value", 0.0))
    return [
        {
            "id": query["Id"],
            "label": instance_id,
            "timestamps": sorted(series),
            "values": [series[bucket] for bucket in sorted(series)],
            "status_code": "Complete",
        }
        for instance_id, series in sorted(sums.items(), key=lambda item: -sum(item[1].values()))[:500]
    ]


# --- IMDS doors outside EC2 instances ------------------------------------------------------------------------------


def teach_lightsail() -> None:
    """Idempotent; part of teach_moto(). moto finds a service's backend as the module `moto.<service>`, and its URLs in
    `moto.backend_index`: both are given the emulator's Lightsail."""
    import re
    import sys

    import moto.backend_index as backend_index

    import emulator.moto_lightsail as lightsail

    sys.modules.setdefault("moto.lightsail", lightsail)
    if not any(service == "lightsail" for service, _ in backend_index.backend_url_patterns):
        backend_index.backend_url_patterns.append(
            ("lightsail", re.compile(r"https?://lightsail\.(.+)\.amazonaws\.com"))
        )


NOTEBOOK_UPDATABLE = ("Stopped", "Failed")


def teach_sagemaker_notebook_imds() -> None:
    """Idempotent; part of teach_moto(). CreateNotebookInstance keeps InstanceMetadataServiceConfiguration (unset:
    IMDSv1, SageMaker's documented create default), DescribeNotebookInstance returns it, and UpdateNotebookInstance
    changes it, refusing a notebook that is not stopped or failed with SageMaker's own message."""
    from moto.core.responses import ActionResult, EmptyResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeSagemakerNotebookInstance
    from moto.sagemaker.responses import SageMakerResponse

    original_create = getattr(
        SageMakerResponse, "_imds_enforcer_original_create", SageMakerResponse.create_notebook_instance
    )
    original_to_dict = getattr(
        FakeSagemakerNotebookInstance, "_imds_enforcer_original_to_dict", FakeSagemakerNotebookInstance.to_dict
    )

    def create_notebook_instance(self: SageMakerResponse) -> ActionResult:
        result = original_create(self)
        config = self._get_param("InstanceMetadataServiceConfiguration") or {}
        notebook = self.sagemaker_backend.get_notebook_instance(self._get_param("NotebookInstanceName"))
        setattr(notebook, "imds_minimum_version", str(config.get("MinimumInstanceMetadataServiceVersion") or "1"))  # noqa: B010
        return result

    def to_dict(self: FakeSagemakerNotebookInstance) -> dict[str, Any]:
        described: dict[str, Any] = original_to_dict(self)
        described["InstanceMetadataServiceConfiguration"] = {
            "MinimumInstanceMetadataServiceVersion": getattr(self, "imds_minimum_version", "1")
        }
        return described

    def update_notebook_instance(self: SageMakerResponse) -> EmptyResult:
        notebook = self.sagemaker_backend.get_notebook_instance(self._get_param("NotebookInstanceName"))
        if notebook.status not in NOTEBOOK_UPDATABLE:
            raise ValidationError(
                message=f"Status ({notebook.status}) not in ([Stopped, Failed]). Unable to transition to (Updating) "
                f"for Notebook Instance ({notebook.arn})"
            )
        config = self._get_param("InstanceMetadataServiceConfiguration") or {}
        if config.get("MinimumInstanceMetadataServiceVersion"):
            setattr(notebook, "imds_minimum_version", str(config["MinimumInstanceMetadataServiceVersion"]))  # noqa: B010
        return EmptyResult()

    SageMakerResponse._imds_enforcer_original_create = original_create  # type: ignore[attr-defined]
    FakeSagemakerNotebookInstance._imds_enforcer_original_to_dict = original_to_dict  # type: ignore[attr-defined]
    SageMakerResponse.create_notebook_instance = create_notebook_instance  # type: ignore[method-assign]
    FakeSagemakerNotebookInstance.to_dict = to_dict  # type: ignore[method-assign]
    SageMakerResponse.update_notebook_instance = update_notebook_instance  # type: ignore[attr-defined]


def teach_beanstalk_option_settings() -> None:
    """Idempotent; part of teach_moto(). CreateEnvironment keeps its OptionSettings, DescribeConfigurationSettings
    returns them, and DescribeEnvironments honours EnvironmentNames (moto returns every environment)."""
    from moto.core.responses import ActionResult
    from moto.elasticbeanstalk.exceptions import InvalidParameterValueError
    from moto.elasticbeanstalk.responses import EBResponse

    original_create = getattr(EBResponse, "_imds_enforcer_original_create", EBResponse.create_environment)
    original_describe = getattr(EBResponse, "_imds_enforcer_original_describe", EBResponse.describe_environments)

    def find(self: EBResponse, application: str, name: str) -> Any:
        app = self.elasticbeanstalk_backend.applications.get(application)
        environment = app.environments.get(name) if app is not None else None
        if environment is None:
            raise InvalidParameterValueError(f"No Environment found for EnvironmentName = '{name}'.")
        return environment

    def create_environment(self: EBResponse) -> ActionResult:
        result = original_create(self)
        environment = find(self, self._get_param("ApplicationName"), self._get_param("EnvironmentName"))
        environment.option_settings = list(self._get_param("OptionSettings", []) or [])
        return result

    def describe_environments(self: EBResponse) -> ActionResult:
        names = self._get_param("EnvironmentNames", []) or []
        if not names:
            return original_describe(self)
        environments = [
            env for env in self.elasticbeanstalk_backend.describe_environments() if env.environment_name in names
        ]
        return ActionResult({"Environments": environments})

    def describe_configuration_settings(self: EBResponse) -> ActionResult:
        application = self._get_param("ApplicationName")
        environment = find(self, application, self._get_param("EnvironmentName"))
        setting = {
            "ApplicationName": application,
            "EnvironmentName": environment.environment_name,
            "SolutionStackName": environment.solution_stack_name,
            "DeploymentStatus": "deployed",
            "DateCreated": environment.date_created,
            "DateUpdated": environment.date_updated,
            "OptionSettings": getattr(environment, "option_settings", []),
        }
        return ActionResult({"ConfigurationSettings": [setting]})

    EBResponse._imds_enforcer_original_create = original_create  # type: ignore[attr-defined]
    EBResponse._imds_enforcer_original_describe = original_describe  # type: ignore[attr-defined]
    EBResponse.create_environment = create_environment  # type: ignore[method-assign]
    EBResponse.describe_environments = describe_environments  # type: ignore[method-assign]
    EBResponse.describe_configuration_settings = describe_configuration_settings  # type: ignore[attr-defined]


def teach_ecs_capacity_provider_listing() -> None:
    """Idempotent; part of teach_moto(). DescribeCapacityProviders without names lists them all (moto: TypeError)."""
    from moto.ecs.models import EC2ContainerServiceBackend

    original = getattr(
        EC2ContainerServiceBackend,
        "_imds_enforcer_original_describe",
        EC2ContainerServiceBackend.describe_capacity_providers,
    )

    def describe_capacity_providers(self: EC2ContainerServiceBackend, names: list[str] | None) -> Any:
        return original(self, list(self.capacity_providers) if names is None else names)

    EC2ContainerServiceBackend._imds_enforcer_original_describe = original  # type: ignore[attr-defined]
    EC2ContainerServiceBackend.describe_capacity_providers = describe_capacity_providers  # type: ignore[method-assign]


# --- SSM Run Command for the caller analysis ---------------------------------------------------------------------
# A test (or the demo) registers the instances whose SSM agent is "online" (`register_managed_instance`) and the
# output a command returns on an instance (`record_command_output`, e.g. a recorded analyzer run); both live on the
# account's and region's SSM backend, so moto's reset clears them with everything else.

_MANAGED_ATTRIBUTE = "_imds_enforcer_managed_instances"
_RECORDED_ATTRIBUTE = "_imds_enforcer_recorded_outputs"
# SSM keeps the first 24,000 characters of a command's standard output (and 8,000 of its standard error).
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000


def _ssm_backend(account: str, region: str) -> Any:
    from moto.ssm.models import ssm_backends

    return ssm_backends[account][region]


def managed_instances_of(backend: Any) -> dict[str, dict[str, Any]]:
    if not hasattr(backend, _MANAGED_ATTRIBUTE):
        setattr(backend, _MANAGED_ATTRIBUTE, {})
    managed: dict[str, dict[str, Any]] = getattr(backend, _MANAGED_ATTRIBUTE)
    return managed


def recorded_outputs_of(backend: Any) -> dict[str, dict[str, Any]]:
    if not hasattr(backend, _RECORDED_ATTRIBUTE):
        setattr(backend, _RECORDED_ATTRIBUTE, {})
    recorded: dict[str, dict[str, Any]] = getattr(backend, _RECORDED_ATTRIBUTE)
    return recorded


def register_managed_instance(
    instance_id: str,
    *,
    account: str,
    region: str,
    platform_type: str = "Linux",
    platform_name: str = "Amazon Linux",
    platform_version: str = "2023",
    ping_status: str = "Online",
) -> None:
    """Stand for an SSM agent that registered the instance (what the agent does on a real instance)."""
    managed_instances_of(_ssm_backend(account, region))[instance_id] = {
        "InstanceId": instance_id,
        "PingStatus": ping_status,
        "LastPingDateTime": datetime.now(UTC),
        "AgentVersion": "3.3.1142.0",
        "IsLatestVersion": True,
        "PlatformType": platform_type,
        "PlatformName": platform_name,
        "PlatformVersion": platform_version,
        "ResourceType": "EC2Instance",
        "IPAddress": "10.0.0.10",
        "ComputerName": f"ip-10-0-0-10.{region}.compute.internal",
    }


def record_command_output(
    instance_id: str,
    *,
    account: str,
    region: str,
    stdout: str,
    status: str = "Success",
    response_code: int = 0,
    stderr: str = "",
) -> None:
    """What the next commands sent to this instance return (a recorded run of the document, or a failure)."""
    recorded_outputs_of(_ssm_backend(account, region))[instance_id] = {
        "Status": status,
        "StatusDetails": status,
        "ResponseCode": response_code,
        "StandardOutputContent": stdout[:STDOUT_LIMIT],
        "StandardErrorContent": stderr[:STDERR_LIMIT],
    }


def teach_ssm_run_command() -> None:
    """Idempotent; part of teach_moto()."""
    from moto.core.exceptions import ServiceException
    from moto.core.responses import ActionResult

    # Defined here, not as a bare ServiceException: moto serializes an error with the model of the service whose
    # package raised it, and falls back to the answering service's (SSM) for a class outside its packages.
    class InvalidDocument(ServiceException):
        code = "InvalidDocument"

    class InvalidInstanceId(ServiceException):
        code = "InvalidInstanceId"

    from moto.ssm.models import Command, SimpleSystemManagerBackend
    from moto.ssm.responses import SimpleSystemManagerResponse

    original_send = getattr(
        SimpleSystemManagerBackend, "_imds_enforcer_original_send", SimpleSystemManagerBackend.send_command
    )
    original_targets = getattr(Command, "_imds_enforcer_original_targets", Command._get_instance_ids_from_targets)
    original_invocation = getattr(Command, "_imds_enforcer_original_invocation", Command.invocation_response)

    def describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
        wanted: dict[str, list[str]] = {}
        for item in self._get_param("Filters", []) or []:
            wanted[item["Key"]] = list(item.get("Values", []))
        for item in self._get_param("InstanceInformationFilterList", []) or []:
            wanted[item["key"]] = list(item.get("valueSet", []))
        managed = list(managed_instances_of(self.ssm_backend).values())
        matching = [
            info
            for info in managed
            if ("InstanceIds" not in wanted or info["InstanceId"] in wanted["InstanceIds"])
            and ("PingStatus" not in wanted or info["PingStatus"] in wanted["PingStatus"])
            and ("PlatformTypes" not in wanted or info["PlatformType"] in wanted["PlatformTypes"])
        ]
        size = int(self._get_param("MaxResults") or 50)
        start = int(self._get_param("NextToken") or 0)
        result: dict[str, Any] = {"InstanceInformationList": matching[start : start + size]}
        if start + size < len(matching):
            result["NextToken"] = str(start + size)
        return ActionResult(result)

    def send_command(self: SimpleSystemManagerBackend, *args: Any, **kwargs: Any) -> Any:
        document = kwargs.get("document_name")
        if document and not str(document).startswith("AWS-") and document not in self._documents:
            raise InvalidDocument(f"Document {document} does not exist.")
        managed = managed_instances_of(self)
        unknown = [instance_id for instance_id in kwargs.get("instance_ids") or [] if instance_id not in managed]
        if unknown:
            raise InvalidInstanceId(f"Instances {unknown} not in a valid state for account.")
        return original_send(self, *args, **kwargs)

    def instance_ids_from_targets(self: Command) -> list[str]:
        # SendCommand with InstanceIds and no Targets reaches those instances only (moto's empty filter: all of them).
        return original_targets(self) if self.targets else []

    def invocation_response(self: Command, instance_id: str, plugin_name: str) -> dict[str, Any]:
        response: dict[str, Any] = original_invocation(self, instance_id, plugin_name)
        recorded = recorded_outputs_of(_ssm_backend(self.account_id, self.backend_region)).get(instance_id)
        if recorded is not None:
            response.update(recorded)
        return response

    Command._imds_enforcer_original_targets = original_targets  # type: ignore[attr-defined]
    Command._imds_enforcer_original_invocation = original_invocation  # type: ignore[attr-defined]
    SimpleSystemManagerBackend._imds_enforcer_original_send = original_send  # type: ignore[attr-defined]
    SimpleSystemManagerResponse.describe_instance_information = describe_instance_information  # type: ignore[attr-defined]
    SimpleSystemManagerBackend.send_command = send_command  # type: ignore[method-assign]
    Command._get_instance_ids_from_targets = instance_ids_from_targets  # type: ignore[method-assign]
    Command.invocation_response = invocation_response  # type: ignore[method-assign]


# AssumeRole as AWS answers it: AccessDenied when the role does not exist, or when its trust policy does not name the
# caller's account (moto hands out credentials for any role ARN, which is how it switches accounts). This is what
# "the StackSet has not reached this account yet" looks like to the organization audit. Trust conditions are not
# evaluated (moto evaluates no IAM policy); a Principal of "*", the account id, or any ARN in the caller's account
# counts as trusting it.

_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/.+$")


def _trusts(policy_document: Any, caller_account: str, partition: str) -> bool:
    document = json.loads(policy_document) if isinstance(policy_document, str) else policy_document
    statements = document.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        if statement.get("Effect") != "Allow" or not {"sts:AssumeRole", "sts:*", "*"} & set(actions):
            continue
        principal = statement.get("Principal", {})
        principals = principal.get("AWS", []) if isinstance(principal, dict) else [principal]
        for name in principals if isinstance(principals, list) else [principals]:
            if name in ("*", caller_account) or str(name).startswith(f"arn:{partition}:iam::{caller_account}:"):
                return True
    return False


def teach_assume_role_checks() -> None:
    """Idempotent; part of teach_moto()."""
    from moto.core.exceptions import AccessDeniedError
    from moto.iam.models import iam_backends
    from moto.sts.models import STSBackend

    original = getattr(STSBackend, "_imds_enforcer_original_assume_role", STSBackend.assume_role)

    def assume_role(self: STSBackend, **kwargs: Any) -> Any:
        role_arn = str(kwargs.get("role_arn", ""))
        match = _ROLE_ARN.match(role_arn)
        trusted = False
        if match is not None:
            partition, account = match.group(1), match.group(2)
            roles = iam_backends[account][partition].roles.values()
            role = next((candidate for candidate in roles if candidate.arn == role_arn), None)
            trusted = role is not None and _trusts(role.assume_role_policy_document, self.account_id, partition)
        if not trusted:
            raise AccessDeniedError(
                user_arn=f"arn:aws:iam::{self.account_id}:root", action=f"sts:AssumeRole on resource: {role_arn}"
            )
        return original(self, **kwargs)

    STSBackend._imds_enforcer_original_assume_role = original  # type: ignore[attr-defined]
    STSBackend.assume_role = assume_role  # type: ignore[method-assign,assignment]

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
"""

from __future__ import annotations

import re
from datetime import timedelta
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

"""EC2 adapter: the only module that calls the EC2 API. Paginates, batches, and turns items into InstanceFacts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from imds_enforcer import clients
from imds_enforcer.instances import InstanceFacts

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import FilterTypeDef

# EC2 accepts at most 200 values in one filter, and CreateTags at most 1000 resources per call.
FILTER_VALUES_LIMIT = 200
TAG_RESOURCES_LIMIT = 1000
PAGE_SIZE = 1000


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def describe_by_ids(instance_ids: Sequence[str]) -> list[InstanceFacts]:
    """The named instances that exist. A filter (not InstanceIds) so one unknown id does not fail the whole call."""
    found: list[InstanceFacts] = []
    for chunk in _chunks(instance_ids, FILTER_VALUES_LIMIT):
        found.extend(iter_instances([{"Name": "instance-id", "Values": list(chunk)}]))
    return found


def iter_instances(filters: Sequence[FilterTypeDef], *, page_size: int = PAGE_SIZE) -> Iterator[InstanceFacts]:
    paginator = clients.ec2().get_paginator("describe_instances")
    pages = paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": page_size})
    for page in pages:
        for reservation in page.get("Reservations", []):
            for item in reservation.get("Instances", []):
                yield InstanceFacts.from_api(item)


def require_tokens(instance_id: str, *, hop_limit: int | None) -> None:
    """HttpTokens=required. Only the fields we change are sent: AWS keeps the endpoint and the rest as they are."""
    if hop_limit is None:
        clients.ec2().modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")
    else:
        clients.ec2().modify_instance_metadata_options(
            InstanceId=instance_id, HttpTokens="required", HttpPutResponseHopLimit=hop_limit
        )


def allow_tokens_optional(instance_id: str) -> None:
    clients.ec2().modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")


def tag_instances(instance_ids: Iterable[str], tags: Mapping[str, str]) -> None:
    ids = list(instance_ids)
    tag_list = [{"Key": key, "Value": value} for key, value in tags.items()]
    for chunk in _chunks(ids, TAG_RESOURCES_LIMIT):
        clients.ec2().create_tags(Resources=list(chunk), Tags=tag_list)  # type: ignore[arg-type]


# The account default (the usage gate's last step). Added after the launch watch's functions, unchanged above.

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import InstanceMetadataDefaultsResponseTypeDef


def instance_metadata_defaults() -> InstanceMetadataDefaultsResponseTypeDef:
    """The account-level IMDS defaults of this region (an empty mapping when none were ever set)."""
    return clients.ec2().get_instance_metadata_defaults().get("AccountLevel", {})


def require_tokens_by_default() -> None:
    """HttpTokens=required for instances launched without an explicit choice. Only that field is sent: the hop
    limit, endpoint and tags settings keep their values, and `HttpTokensEnforced` (which makes a launch that asks
    for optional fail) is left to the guardrails step: exempt workloads may still launch that way."""
    clients.ec2().modify_instance_metadata_defaults(HttpTokens="required")

"""EC2 adapter: the only module that calls the EC2 API. Paginates, batches, and turns items into InstanceFacts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.model import ListShape, Shape, StructureShape

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated
from imds_enforcer.domain.instances import InstanceFacts

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        ImageTypeDef,
        InstanceMetadataDefaultsResponseTypeDef,
        LaunchTemplateTypeDef,
        LaunchTemplateVersionTypeDef,
    )

# EC2 accepts at most 200 values in one filter, and CreateTags at most 1000 resources per call.
FILTER_VALUES_LIMIT = 200
TAG_RESOURCES_LIMIT = 1000
PAGE_SIZE = 1000
# The states in which an instance's metadata options still matter (and can be changed).
LIVE_STATES = ("pending", "running", "stopped")


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
    with translated("DescribeInstances"):
        for page in paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": page_size}):
            for reservation in page.get("Reservations", []):
                for item in reservation.get("Instances", []):
                    yield InstanceFacts.from_api(item)


def iter_instances_by_tokens(http_tokens: str) -> Iterator[InstanceFacts]:
    """Live instances whose HttpTokens is `http_tokens` (`optional` or `required`), filtered by EC2."""
    return iter_instances(
        [
            {"Name": "metadata-options.http-tokens", "Values": [http_tokens]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
    )


def iter_instances_tagged(tag_key: str) -> Iterator[InstanceFacts]:
    """Live instances carrying the tag key `tag_key` (any value)."""
    return iter_instances(
        [{"Name": "tag-key", "Values": [tag_key]}, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    )


def require_tokens(instance_id: str, *, hop_limit: int | None, paced: bool = False) -> None:
    """HttpTokens=required. Only the fields we change are sent: AWS keeps the endpoint and the rest as they are.
    `paced`: through the paced client (one retry), whose caller's pacer handles throttles (workflows/pacing.py)."""
    client = clients.ec2_paced() if paced else clients.ec2()
    with translated("ModifyInstanceMetadataOptions"):
        if hop_limit is None:
            client.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")
        else:
            client.modify_instance_metadata_options(
                InstanceId=instance_id, HttpTokens="required", HttpPutResponseHopLimit=hop_limit
            )


def throttled_attempts() -> int:
    """How many RequestLimitExceeded the paced client has received so far (retried or not): the pacer compares it
    before and after a modify."""
    return clients.PACED_THROTTLES.count


def raise_hop_limit(instance_id: str, hop_limit: int, *, paced: bool = False) -> None:
    """Only the hop limit: the tokens (and everything else) stay as they are."""
    client = clients.ec2_paced() if paced else clients.ec2()
    with translated("ModifyInstanceMetadataOptions"):
        client.modify_instance_metadata_options(InstanceId=instance_id, HttpPutResponseHopLimit=hop_limit)


def image_names(image_ids: Sequence[str]) -> dict[str, str]:
    """Image id -> AMI name for the ones DescribeImages still lists (public, shared and own AMIs, deprecated ones
    too when named by id). An `image-id` filter, not ImageIds: a deregistered AMI is simply not listed instead of
    failing the whole call."""
    names: dict[str, str] = {}
    unique = list(dict.fromkeys(image_id for image_id in image_ids if image_id))
    with translated("DescribeImages"):
        for chunk in _chunks(unique, FILTER_VALUES_LIMIT):
            response = clients.ec2().describe_images(Filters=[{"Name": "image-id", "Values": list(chunk)}])
            for image in response.get("Images", []):
                names[image["ImageId"]] = image.get("Name", "")
    return names


def any_instance_tagged(tag_keys: Sequence[str]) -> bool:
    """Whether a live instance carries any of these tag keys (`*` wildcards allowed): one page, at most 5 items."""
    paginator = clients.ec2().get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": "tag-key", "Values": list(tag_keys)},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ],
        PaginationConfig={"PageSize": 5, "MaxItems": 5},
    )
    with translated("DescribeInstances"):
        return any(reservation.get("Instances") for page in pages for reservation in page.get("Reservations", []))


def allow_tokens_optional(instance_id: str) -> None:
    with translated("ModifyInstanceMetadataOptions"):
        clients.ec2().modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")


def tag_instances(instance_ids: Iterable[str], tags: Mapping[str, str]) -> None:
    ids = list(instance_ids)
    tag_list = [{"Key": key, "Value": value} for key, value in tags.items()]
    with translated("CreateTags"):
        for chunk in _chunks(ids, TAG_RESOURCES_LIMIT):
            clients.ec2().create_tags(Resources=list(chunk), Tags=tag_list)  # type: ignore[arg-type]


# --- the account default (the usage gate's last step) -----------------------------------------------------------


def instance_metadata_defaults() -> InstanceMetadataDefaultsResponseTypeDef:
    """The account-level IMDS defaults of this region (an empty mapping when none were ever set)."""
    with translated("GetInstanceMetadataDefaults"):
        return clients.ec2().get_instance_metadata_defaults().get("AccountLevel", {})


def require_tokens_by_default(*, hop_limit: int | None = None) -> None:
    """HttpTokens=required for instances launched without an explicit choice, and the hop limit when given. Only
    those fields are sent: the endpoint and tags settings keep their values, and `HttpTokensEnforced` (which makes a
    launch that asks for optional fail) is left to the guardrails step: exempt workloads may still launch that way."""
    with translated("ModifyInstanceMetadataDefaults"):
        if hop_limit is None:
            clients.ec2().modify_instance_metadata_defaults(HttpTokens="required")
        else:
            clients.ec2().modify_instance_metadata_defaults(HttpTokens="required", HttpPutResponseHopLimit=hop_limit)


# --- where new instances come from (launch templates, AMIs) ------------------------------------------------------

# DescribeLaunchTemplates and DescribeLaunchTemplateVersions return at most 200 items a page.
TEMPLATE_PAGE_SIZE = 200
IMAGE_PAGE_SIZE = 1000
DEFAULT_AND_LATEST = ["$Default", "$Latest"]


def iter_launch_templates() -> Iterator[LaunchTemplateTypeDef]:
    paginator = clients.ec2().get_paginator("describe_launch_templates")
    with translated("DescribeLaunchTemplates"):
        for page in paginator.paginate(PaginationConfig={"PageSize": TEMPLATE_PAGE_SIZE}):
            yield from page.get("LaunchTemplates", [])


def describe_launch_template(template_id: str) -> LaunchTemplateTypeDef | None:
    """One template by id (None if it is not listed). AWS fails the whole call for an unknown id
    (InvalidLaunchTemplateId.NotFound), so one id a call keeps one deleted template from hiding the others."""
    with translated("DescribeLaunchTemplates"):
        found = clients.ec2().describe_launch_templates(LaunchTemplateIds=[template_id]).get("LaunchTemplates", [])
    return found[0] if found else None


def default_and_latest_versions(template_id: str | None = None) -> list[LaunchTemplateVersionTypeDef]:
    """The default and latest versions of one template, or (no id) of every template in the region in the same
    paginated call. A version that is both default and latest is returned once."""
    paginator = clients.ec2().get_paginator("describe_launch_template_versions")
    if template_id is None:
        pages = paginator.paginate(Versions=DEFAULT_AND_LATEST, PaginationConfig={"PageSize": TEMPLATE_PAGE_SIZE})
    else:
        pages = paginator.paginate(
            LaunchTemplateId=template_id, Versions=DEFAULT_AND_LATEST, PaginationConfig={"PageSize": TEMPLATE_PAGE_SIZE}
        )
    seen: set[tuple[str, int]] = set()
    versions: list[LaunchTemplateVersionTypeDef] = []
    with translated("DescribeLaunchTemplateVersions"):
        for page in pages:
            for item in page.get("LaunchTemplateVersions", []):
                key = (item.get("LaunchTemplateId", ""), item.get("VersionNumber", 0))
                if key not in seen:
                    seen.add(key)
                    versions.append(item)
    return versions


def create_launch_template_version(
    template_id: str, *, source_version: int, data: Mapping[str, Any], description: str, client_token: str
) -> int:
    """A new version from `source_version`, with `data` (the source's data, changed where we mean it) on top.

    The describe output is not a valid request (a few response-only fields), so each top-level field is sent only
    if it survives the request shape unchanged; the others are left to SourceVersion, which copies them as they
    are. The client token makes a repeated fix (the gate and the launch watch on the same template) return the
    same version instead of a second one. Returns the new version number."""
    operation = clients.ec2().meta.service_model.operation_model("CreateLaunchTemplateVersion")
    request_shape = operation.input_shape.members["LaunchTemplateData"] if operation.input_shape else None
    sendable = {}
    for key, value in data.items():
        member = request_shape.members.get(key) if isinstance(request_shape, StructureShape) else None
        if member is not None and _fit_to_shape(value, member) == value:
            sendable[key] = value
    with translated("CreateLaunchTemplateVersion"):
        response = clients.ec2().create_launch_template_version(
            LaunchTemplateId=template_id,
            SourceVersion=str(source_version),
            LaunchTemplateData=sendable,  # type: ignore[arg-type]
            VersionDescription=description[:255],
            ClientToken=client_token[:64],
        )
    return int(response["LaunchTemplateVersion"]["VersionNumber"])


def set_default_launch_template_version(template_id: str, version: int) -> None:
    with translated("ModifyLaunchTemplate"):
        clients.ec2().modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(version))


def _fit_to_shape(value: Any, shape: Shape) -> Any:
    """`value` with every member the request shape does not know removed (recursively)."""
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        return {key: _fit_to_shape(item, shape.members[key]) for key, item in value.items() if key in shape.members}
    if isinstance(shape, ListShape) and isinstance(value, list):
        return [_fit_to_shape(item, shape.member) for item in value]
    return value


def iter_own_images(image_ids: Sequence[str] | None = None) -> Iterator[ImageTypeDef]:
    """The account's own AMIs (Owners=self), all of them or the named ones; another account's AMI is never listed,
    so it can never be modified. Named ones go in an `image-id` filter, not ImageIds: an unknown or deleted id is
    then simply not listed instead of failing the whole call (InvalidAMIID.NotFound)."""
    paginator = clients.ec2().get_paginator("describe_images")
    batches: list[list[FilterTypeDef]] = (
        [[]]
        if image_ids is None
        else [[{"Name": "image-id", "Values": list(chunk)}] for chunk in _chunks(image_ids, FILTER_VALUES_LIMIT)]
    )
    with translated("DescribeImages"):
        for filters in batches:
            pages = paginator.paginate(Owners=["self"], Filters=filters, PaginationConfig={"PageSize": IMAGE_PAGE_SIZE})
            for page in pages:
                yield from page.get("Images", [])


def require_imds_v2_image(image_id: str) -> None:
    """ImdsSupport=v2.0. AWS cannot undo this on the AMI."""
    with translated("ModifyImageAttribute"):
        clients.ec2().modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})

"""ECS adapter: capacity providers (read only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import CapacityProviderTypeDef

# DescribeCapacityProviders returns at most 10 a page when it lists them all.
PAGE_SIZE = 10


def capacity_providers(names: Sequence[str] | None = None) -> list[CapacityProviderTypeDef]:
    """Every capacity provider of the region (None: the API's "all", paged) or the named ones, with their tags."""
    found: list[CapacityProviderTypeDef] = []
    request: dict[str, Any] = {"include": ["TAGS"]}
    if names is not None:
        request["capacityProviders"] = list(names)
    else:
        request["maxResults"] = PAGE_SIZE
    with translated("DescribeCapacityProviders"):
        while True:
            response = clients.ecs().describe_capacity_providers(**request)
            found.extend(response.get("capacityProviders", []))
            token = response.get("nextToken")
            if names is not None or not token:
                return found
            request["nextToken"] = token

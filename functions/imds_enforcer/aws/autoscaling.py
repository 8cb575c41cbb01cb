"""Auto Scaling adapter: the only module that calls the Auto Scaling API. Paginates; returns API items."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated

if TYPE_CHECKING:
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef, LaunchConfigurationTypeDef

# DescribeAutoScalingGroups and DescribeLaunchConfigurations return at most 100 a page; at most 50 names a call.
PAGE_SIZE = 100
NAMES_LIMIT = 50


def iter_groups() -> Iterator[AutoScalingGroupTypeDef]:
    paginator = clients.autoscaling().get_paginator("describe_auto_scaling_groups")
    with translated("DescribeAutoScalingGroups"):
        for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE}):
            yield from page.get("AutoScalingGroups", [])


def iter_launch_configurations(names: Sequence[str] | None = None) -> Iterator[LaunchConfigurationTypeDef]:
    """All launch configurations of the region, or the named ones (an unknown name is simply not listed)."""
    paginator = clients.autoscaling().get_paginator("describe_launch_configurations")
    batches: list[list[str] | None] = (
        [None]
        if names is None
        else [list(names[start : start + NAMES_LIMIT]) for start in range(0, len(names), NAMES_LIMIT)]
    )
    with translated("DescribeLaunchConfigurations"):
        for batch in batches:
            kwargs = {} if batch is None else {"LaunchConfigurationNames": batch}
            for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": PAGE_SIZE}):
                yield from page.get("LaunchConfigurations", [])

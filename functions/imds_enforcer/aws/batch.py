"""AWS Batch adapter: compute environments (read only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated

if TYPE_CHECKING:
    from mypy_boto3_batch.type_defs import ComputeEnvironmentDetailTypeDef


def compute_environments(names: Sequence[str] | None = None) -> list[ComputeEnvironmentDetailTypeDef]:
    paginator = clients.batch().get_paginator("describe_compute_environments")
    found: list[ComputeEnvironmentDetailTypeDef] = []
    with translated("DescribeComputeEnvironments"):
        pages = paginator.paginate() if names is None else paginator.paginate(computeEnvironments=list(names))
        for page in pages:
            found.extend(page.get("computeEnvironments", []))
    return found

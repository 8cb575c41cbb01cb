"""EKS adapter: managed node groups (read only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

if TYPE_CHECKING:
    from mypy_boto3_eks.type_defs import NodegroupTypeDef


def cluster_names() -> Iterator[str]:
    paginator = clients.eks().get_paginator("list_clusters")
    with translated("ListClusters"):
        for page in paginator.paginate():
            yield from page.get("clusters", [])


def nodegroup_names(cluster: str) -> Iterator[str]:
    paginator = clients.eks().get_paginator("list_nodegroups")
    with translated("ListNodegroups"):
        for page in paginator.paginate(clusterName=cluster):
            yield from page.get("nodegroups", [])


def describe_nodegroup(cluster: str, nodegroup: str) -> NodegroupTypeDef | None:
    """The node group, or None when EKS does not know it (deleted since it was listed or named)."""
    try:
        return clients.eks().describe_nodegroup(clusterName=cluster, nodegroupName=nodegroup)["nodegroup"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise AwsError.from_client_error("DescribeNodegroup", error) from error

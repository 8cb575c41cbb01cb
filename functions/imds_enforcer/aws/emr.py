"""EMR adapter: live clusters and their security configurations (read only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated

if TYPE_CHECKING:
    from mypy_boto3_emr.literals import ClusterStateType
    from mypy_boto3_emr.type_defs import ClusterTypeDef

# Clusters whose instances exist (or are about to): the ones whose IMDS setting still matters.
LIVE_STATES: tuple[ClusterStateType, ...] = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")


def live_cluster_ids() -> Iterator[str]:
    paginator = clients.emr().get_paginator("list_clusters")
    with translated("ListClusters"):
        for page in paginator.paginate(ClusterStates=list(LIVE_STATES)):
            for item in page.get("Clusters", []):
                yield str(item["Id"])


def describe_cluster(cluster_id: str) -> ClusterTypeDef:
    with translated("DescribeCluster"):
        return clients.emr().describe_cluster(ClusterId=cluster_id)["Cluster"]


def security_configuration(name: str) -> str:
    """The configuration's JSON document."""
    with translated("DescribeSecurityConfiguration"):
        return str(clients.emr().describe_security_configuration(Name=name).get("SecurityConfiguration", ""))

"""CloudTrail calls (through EventBridge) that create or change an IMDS door outside EC2 instances, and the resource
each one names. Read by `domain.events.read_launch_event` for the sources listed in DOOR_EVENT_SOURCES.

The shapes read here come from the services' API references (CloudTrail records a call's request parameters in the
API's own spelling, camelCase), not recorded payloads: ids are looked for in requestParameters (responseElements for
EMR's RunJobFlow, whose id AWS generates), case-insensitively, at any depth of wrappers, as `events.py` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imds_enforcer.domain.doors import (
    BATCH_COMPUTE_ENVIRONMENT,
    BEANSTALK_ENVIRONMENT,
    ECS_CAPACITY_PROVIDER,
    EKS_NODEGROUP,
    EMR_CLUSTER,
    LIGHTSAIL_INSTANCE,
    SAGEMAKER_NOTEBOOK,
)

# EventBridge source -> the CloudTrail eventSource its API calls carry.
DOOR_EVENT_SOURCES = {
    "aws.sagemaker": "sagemaker.amazonaws.com",
    "aws.lightsail": "lightsail.amazonaws.com",
    "aws.elasticbeanstalk": "elasticbeanstalk.amazonaws.com",
    "aws.batch": "batch.amazonaws.com",
    "aws.eks": "eks.amazonaws.com",
    "aws.ecs": "ecs.amazonaws.com",
    "aws.emr": "elasticmapreduce.amazonaws.com",
}


@dataclass(frozen=True, slots=True)
class DoorTrigger:
    """Doors outside EC2 instances (a `domain.doors` resource type) that a CloudTrail event created or changed."""

    resource_type: str
    resource_ids: tuple[str, ...]
    event_id: str
    event_name: str


@dataclass(frozen=True, slots=True)
class DoorCall:
    resource_type: str
    # Where the id is: ("request" | "response", key names to try in order); a list value gives several ids.
    where: str
    keys: tuple[str, ...]


# eventSource -> eventName -> what it names. Worth watching: the calls that create a door or change its IMDS setting.
DOOR_EVENTS: dict[str, dict[str, DoorCall]] = {
    "sagemaker.amazonaws.com": {
        "CreateNotebookInstance": DoorCall(SAGEMAKER_NOTEBOOK, "request", ("notebookInstanceName",)),
        "UpdateNotebookInstance": DoorCall(SAGEMAKER_NOTEBOOK, "request", ("notebookInstanceName",)),
    },
    "lightsail.amazonaws.com": {
        "CreateInstances": DoorCall(LIGHTSAIL_INSTANCE, "request", ("instanceNames",)),
        "CreateInstancesFromSnapshot": DoorCall(LIGHTSAIL_INSTANCE, "request", ("instanceNames",)),
        "UpdateInstanceMetadataOptions": DoorCall(LIGHTSAIL_INSTANCE, "request", ("instanceName",)),
    },
    "elasticbeanstalk.amazonaws.com": {
        "CreateEnvironment": DoorCall(BEANSTALK_ENVIRONMENT, "request", ("environmentName",)),
        "UpdateEnvironment": DoorCall(BEANSTALK_ENVIRONMENT, "request", ("environmentName",)),
    },
    "batch.amazonaws.com": {
        "CreateComputeEnvironment": DoorCall(BATCH_COMPUTE_ENVIRONMENT, "request", ("computeEnvironmentName",)),
        "UpdateComputeEnvironment": DoorCall(BATCH_COMPUTE_ENVIRONMENT, "request", ("computeEnvironment",)),
    },
    "eks.amazonaws.com": {
        "CreateNodegroup": DoorCall(EKS_NODEGROUP, "request", ("clusterName", "nodegroupName")),
        "UpdateNodegroupVersion": DoorCall(EKS_NODEGROUP, "request", ("clusterName", "nodegroupName")),
    },
    "ecs.amazonaws.com": {
        "CreateCapacityProvider": DoorCall(ECS_CAPACITY_PROVIDER, "request", ("name",)),
        "UpdateCapacityProvider": DoorCall(ECS_CAPACITY_PROVIDER, "request", ("name",)),
    },
    "elasticmapreduce.amazonaws.com": {
        "RunJobFlow": DoorCall(EMR_CLUSTER, "response", ("jobFlowId",)),
    },
}
# Every eventName above, for the EventBridge pattern.
DOOR_EVENT_NAMES = sorted({name for calls in DOOR_EVENTS.values() for name in calls})
MAX_NAME_LENGTH = 1024


def door_ids(call: DoorCall, request: Mapping[str, Any] | None, response: Mapping[str, Any] | None) -> list[str]:
    """The resource ids the call names (EKS's as "cluster/nodegroup"); empty when it names none we can read."""
    node = request if call.where == "request" else response
    if call.resource_type == EKS_NODEGROUP:
        cluster = _find(node, "clustername")
        nodegroup = _find(node, "nodegroupname")
        if isinstance(cluster, str) and isinstance(nodegroup, str) and cluster and nodegroup:
            return [f"{cluster}/{nodegroup}"]
        return []
    value = _find(node, call.keys[0].lower())
    values = value if isinstance(value, list) else [value]
    return [item.strip() for item in values if isinstance(item, str) and 0 < len(item.strip()) <= MAX_NAME_LENGTH]


def _find(node: object, key: str, depth: int = 4) -> object:
    """The first value under `key` (compared case-insensitively), breadth first, at most `depth` levels."""
    level: list[object] = [node]
    for _ in range(depth):
        deeper: list[object] = []
        for item in level:
            if not isinstance(item, Mapping):
                continue
            for name, value in item.items():
                if isinstance(name, str) and name.lower() == key and value not in (None, "", []):
                    return value
            deeper.extend(value for value in item.values() if isinstance(value, Mapping))
        level = deeper
    return None

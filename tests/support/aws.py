"""Helpers that build AWS state with real boto3 calls (against moto) and read back what the service did."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3

from emulator.events import (  # noqa: F401 (re-exported)
    modify_options_event,
    queue_batch,
    run_instances_event,
    scheduled_event,
    state_change_event,
)
from emulator.observe import Inbox as ReportInbox
from emulator.observe import Received  # noqa: F401 (re-exported)
from tests.support.schema import assert_valid_report

# The gate's schedule, with a fixed id so a test can find it in the report's source_event_id.
SCHEDULED = scheduled_event(event_id="5d0c5f7a-0000-4000-8000-00000000beef")


def make_inbox(name: str = "imds-enforcer-reports") -> ReportInbox:
    """The report topic and a subscribed queue; every report read back is checked against the JSON Schema."""
    return ReportInbox.create(name, check=assert_valid_report)


def launch(
    *,
    tokens: str = "optional",
    hop_limit: int = 1,
    endpoint: str = "enabled",
    tags: Mapping[str, str] | None = None,
    count: int = 1,
    image_id: str = "ami-12c6146b",
) -> list[str]:
    """RunInstances with the given metadata options; returns the instance ids."""
    ec2 = boto3.client("ec2")
    kwargs: dict[str, Any] = {
        "ImageId": image_id,
        "MinCount": count,
        "MaxCount": count,
        "InstanceType": "t3.micro",
        "MetadataOptions": {"HttpTokens": tokens, "HttpPutResponseHopLimit": hop_limit, "HttpEndpoint": endpoint},
    }
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return [item["InstanceId"] for item in ec2.run_instances(**kwargs)["Instances"]]


def metadata_options(instance_id: str) -> dict[str, Any]:
    ec2 = boto3.client("ec2")
    item = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    options: dict[str, Any] = item["MetadataOptions"]
    return options


def tags_of(instance_id: str) -> dict[str, str]:
    ec2 = boto3.client("ec2")
    item = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}


def set_state(instance_id: str, state: str) -> None:
    """Put a moto instance into a state RunInstances never leaves it in (moto starts instances `running`)."""
    from moto.backends import get_backend
    from moto.ec2.models.instances import InstanceState

    codes = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
    for backend in get_backend("ec2").values():
        for regional in backend.values():
            for reservation in regional.reservations.values():
                for instance in reservation.instances:
                    if instance.id == instance_id:
                        instance._state = InstanceState(state, codes[state])
                        return
    raise KeyError(instance_id)

"""Instance facts from DescribeInstances items: the first launch survives restarts; recorded payloads and our own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import container_host_reason

RESPONSES = "responses"


def item(**overrides: Any) -> dict[str, Any]:
    """A DescribeInstances item shaped like the recorded ones: restarted (LaunchTime after the ENI's attach time)."""
    base: dict[str, Any] = {
        "InstanceId": "i-0aaaabbbbccccdddd",
        "ImageId": "ami-0123456789abcdef0",
        "State": {"Name": "running"},
        "LaunchTime": "2025-03-05T15:39:17+00:00",
        "RootDeviceName": "/dev/xvda",
        "MetadataOptions": {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
        "NetworkInterfaces": [
            {"Attachment": {"AttachTime": "2024-01-02T03:04:05+00:00", "DeviceIndex": 1, "NetworkCardIndex": 0}},
            {"Attachment": {"AttachTime": "2022-09-08T14:36:42+00:00", "DeviceIndex": 0, "NetworkCardIndex": 0}},
        ],
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"AttachTime": "2022-09-08T14:36:43+00:00"}}],
    }
    base.update(overrides)
    return base


def test_the_first_launch_is_the_primary_interfaces_attach_time_not_the_last_start() -> None:
    facts = InstanceFacts.from_api(item())

    assert facts.first_launch_time == datetime(2022, 9, 8, 14, 36, 42, tzinfo=UTC)
    assert facts.launch_time == datetime(2025, 3, 5, 15, 39, 17, tzinfo=UTC)
    assert facts.image_id == "ami-0123456789abcdef0"


def test_without_a_primary_interface_the_root_volume_tells_the_first_launch() -> None:
    facts = InstanceFacts.from_api(item(NetworkInterfaces=[]))
    assert facts.first_launch_time == datetime(2022, 9, 8, 14, 36, 43, tzinfo=UTC)


def test_with_neither_the_first_launch_is_unknown() -> None:
    assert InstanceFacts.from_api(item(NetworkInterfaces=[], BlockDeviceMappings=[])).first_launch_time is None
    # a volume that is not the root device says nothing about the first launch
    other = [{"DeviceName": "/dev/sdf", "Ebs": {"AttachTime": "2023-01-01T00:00:00+00:00"}}]
    assert InstanceFacts.from_api(item(NetworkInterfaces=[], BlockDeviceMappings=other)).first_launch_time is None


def test_boto3_datetimes_are_read_as_they_come() -> None:
    attached = datetime(2022, 9, 8, 14, 36, 42, tzinfo=UTC)
    interfaces = [{"Attachment": {"AttachTime": attached, "DeviceIndex": 0}}]
    assert InstanceFacts.from_api(item(NetworkInterfaces=interfaces)).first_launch_time == attached


@pytest.mark.parametrize(
    ("event_after_first_launch", "new"),
    [(timedelta(seconds=20), True), (timedelta(minutes=14), True), (timedelta(minutes=16), False)],
)
def test_an_event_within_minutes_of_the_first_launch_is_about_a_new_instance(
    event_after_first_launch: timedelta, new: bool
) -> None:
    facts = InstanceFacts.from_api(item())
    assert facts.first_launch_time is not None
    assert facts.is_new_at(facts.first_launch_time + event_after_first_launch) is new
    # and an unknown first launch is never new: a restart is decided on evidence
    unknown = InstanceFacts.from_api(item(NetworkInterfaces=[], BlockDeviceMappings=[]))
    assert not unknown.is_new_at(datetime.now(UTC))


def test_recorded_instances_restarted_since_their_first_launch_are_recognised(samples_dir: Path) -> None:
    # Given the recorded DescribeInstances answers (real accounts)
    restarted = {}
    for path in sorted((samples_dir / RESPONSES).glob("ec2_describe-instances_*.json")):
        for reservation in json.loads(path.read_text())["Reservations"]:
            for raw in reservation["Instances"]:
                facts = InstanceFacts.from_api(raw)
                if facts.first_launch_time and facts.launch_time and facts.launch_time > facts.first_launch_time:
                    restarted[facts.instance_id] = facts
    # Then the two instances whose LaunchTime is days or years after their first launch are among them, dated from
    # their primary interface
    assert restarted["i-00d3f85ef9622b0e2"].first_launch_time == datetime(2022, 9, 8, 14, 36, 42, tzinfo=UTC)
    assert restarted["i-02357547fb91718be"].first_launch_time == datetime(2022, 9, 21, 9, 55, 10, tzinfo=UTC)
    # And a start event at their last LaunchTime is a restart, not a launch
    for instance_id in ("i-00d3f85ef9622b0e2", "i-02357547fb91718be"):
        last_start = restarted[instance_id].launch_time
        assert last_start is not None
        assert not restarted[instance_id].is_new_at(last_start)


@pytest.mark.parametrize(
    ("image_name", "family"),
    [
        ("amazon-eks-node-1.28-v20231002", "EKS-optimized"),
        ("amazon-eks-arm64-node-1.29-v20240213", "EKS-optimized"),
        ("amazon-eks-gpu-node-1.29-v20240213", "EKS-optimized"),
        ("amazon-eks-node-al2023-x86_64-standard-1.35-v20260827", "EKS-optimized"),
        ("bottlerocket-aws-k8s-1.30-x86_64-v1.20.5-1234abcd", "Bottlerocket for EKS"),
        ("bottlerocket-aws-ecs-2-aarch64-v1.20.5-1234abcd", "Bottlerocket for ECS"),
        ("al2023-ami-ecs-hvm-2023.0.20241115-kernel-6.1-x86_64", "ECS-optimized"),
        ("amzn2-ami-ecs-hvm-2.0.20240611-x86_64-ebs", "ECS-optimized"),
        ("amzn2-ami-ecs-kernel-5.10-hvm-2.0.20240611-x86_64-ebs", "ECS-optimized"),
        ("amzn-ami-2018.03.20200205-amazon-ecs-optimized", "ECS-optimized"),
        ("Windows_Server-2022-English-Full-ECS_Optimized-2024.06.13", "ECS-optimized Windows"),
        ("Windows_Server-2022-English-Core-EKS_Optimized-1.29-2024.06.13", "EKS-optimized Windows"),
    ],
)
def test_container_host_amis_are_recognised_by_family(image_name: str, family: str) -> None:
    assert container_host_reason({}, (), image_name) == f"{family} AMI {image_name}"


@pytest.mark.parametrize(
    "image_name", ["", "al2023-ami-2023.5.20240624.0-kernel-6.1-x86_64", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04"]
)
def test_other_amis_are_not_container_hosts(image_name: str) -> None:
    assert container_host_reason({"team": "web"}, (), image_name) is None
    # a tag still says so, whatever the AMI
    assert container_host_reason({"kubernetes.io/cluster/prod": "owned"}, (), image_name) == (
        "tag kubernetes.io/cluster/prod"
    )

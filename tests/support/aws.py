"""Helpers that build AWS state with real boto3 calls (against moto) and read back what the service did."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3

from tests.support.schema import assert_valid_report


@dataclass(frozen=True)
class Received:
    subject: str
    attributes: dict[str, str]
    report: dict[str, Any]


@dataclass(frozen=True)
class ReportInbox:
    topic_arn: str
    queue_url: str

    def drain(self) -> list[Received]:
        sqs = boto3.client("sqs")
        received: list[Received] = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return received
            for message in batch:
                envelope = json.loads(message["Body"])
                report = json.loads(envelope["Message"])
                assert_valid_report(report)
                received.append(
                    Received(
                        subject=envelope.get("Subject", ""),
                        attributes={k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                        report=report,
                    )
                )
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


def make_inbox(name: str = "imds-enforcer-reports") -> ReportInbox:
    sns = boto3.client("sns")
    sqs = boto3.client("sqs")
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return ReportInbox(topic_arn=topic_arn, queue_url=queue_url)


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


def state_change_event(
    instance_id: str,
    state: str = "running",
    *,
    account: str = "123456789012",
    region: str = "us-east-1",
    event_id: str = "7bf73129-1428-4cd3-a780-95db273d1602",
    id_key: str = "instance-id",
) -> dict[str, Any]:
    """An `EC2 Instance State-change Notification` as EventBridge delivers it."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": account,
        "time": "2026-11-20T12:00:00Z",
        "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
        "detail": {id_key: instance_id, "state": state},
    }


def run_instances_event(
    instance_ids: list[str],
    *,
    account: str = "123456789012",
    region: str = "us-east-1",
    event_id: str = "3a1b2c3d-0000-4000-8000-000000000001",
) -> dict[str, Any]:
    """A CloudTrail RunInstances record in its EventBridge envelope, shaped like the 2024 samples."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "account": account,
        "time": "2026-11-20T12:00:00Z",
        "region": region,
        "resources": [],
        "detail": {
            "eventVersion": "1.09",
            "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances",
            "awsRegion": region,
            "recipientAccountId": account,
            "userIdentity": {"type": "AssumedRole", "arn": f"arn:aws:sts::{account}:assumed-role/Deployer/ci"},
            "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-12c6146b", "minCount": 1}]}},
            "responseElements": {
                "instancesSet": {
                    "items": [
                        {
                            "instanceId": instance_id,
                            "instanceState": {"code": 0, "name": "pending"},
                            "metadataOptions": {"state": "pending", "httpTokens": "optional"},
                        }
                        for instance_id in instance_ids
                    ]
                }
            },
        },
    }


def modify_options_event(
    instance_id: str,
    tokens: str = "optional",
    *,
    caller_role: str = "PlatformAdmin",
    caller_role_path: str = "/",
    account: str = "123456789012",
    region: str = "us-east-1",
    error_code: str | None = None,
) -> dict[str, Any]:
    """A CloudTrail ModifyInstanceMetadataOptions record: PascalCase request keys, as CloudTrail records them."""
    detail: dict[str, Any] = {
        "eventVersion": "1.09",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "ModifyInstanceMetadataOptions",
        "awsRegion": region,
        "recipientAccountId": account,
        "userIdentity": {
            "type": "AssumedRole",
            "arn": f"arn:aws:sts::{account}:assumed-role/{caller_role}/session",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "userName": caller_role,
                    "arn": f"arn:aws:iam::{account}:role{caller_role_path}{caller_role}",
                }
            },
        },
        "requestParameters": {
            "ModifyInstanceMetadataOptionsRequest": {"HttpTokens": tokens, "InstanceId": instance_id}
        },
        "responseElements": None
        if error_code
        else {"ModifyInstanceMetadataOptionsResponse": {"instanceId": instance_id}},
    }
    if error_code:
        detail["errorCode"] = error_code
    return {
        "version": "0",
        "id": f"mod-{instance_id}-{tokens}",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "account": account,
        "time": "2026-11-20T12:00:00Z",
        "region": region,
        "resources": [],
        "detail": detail,
    }


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

"""Events shaped as EventBridge delivers them (CloudTrail records, the schedule), for the demo's handler calls."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _envelope(detail_type: str, source: str, detail: dict[str, Any], *, account: str, region: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": _now(),
        "region": region,
        "resources": [],
        "detail": detail,
    }


def run_instances(instance_ids: Sequence[str], *, account: str, region: str) -> dict[str, Any]:
    """A CloudTrail RunInstances record (camelCase response elements, as CloudTrail writes them)."""
    detail = {
        "eventVersion": "1.09",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "RunInstances",
        "eventTime": _now(),
        "awsRegion": region,
        "recipientAccountId": account,
        "userIdentity": {"type": "AssumedRole", "arn": f"arn:aws:sts::{account}:assumed-role/Deployer/ci-pipeline"},
        "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-12c6146b", "minCount": len(instance_ids)}]}},
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
    }
    return _envelope("AWS API Call via CloudTrail", "aws.ec2", detail, account=account, region=region)


def modify_options(instance_id: str, tokens: str, *, caller_role: str, account: str, region: str) -> dict[str, Any]:
    """A CloudTrail ModifyInstanceMetadataOptions record (PascalCase request keys, as CloudTrail writes them)."""
    detail = {
        "eventVersion": "1.09",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "ModifyInstanceMetadataOptions",
        "eventTime": _now(),
        "awsRegion": region,
        "recipientAccountId": account,
        "userIdentity": {
            "type": "AssumedRole",
            "arn": f"arn:aws:sts::{account}:assumed-role/{caller_role}/session",
            "sessionContext": {"sessionIssuer": {"type": "Role", "userName": caller_role}},
        },
        "requestParameters": {
            "ModifyInstanceMetadataOptionsRequest": {"HttpTokens": tokens, "InstanceId": instance_id}
        },
        "responseElements": {"ModifyInstanceMetadataOptionsResponse": {"instanceId": instance_id}},
    }
    return _envelope("AWS API Call via CloudTrail", "aws.ec2", detail, account=account, region=region)


def scheduled(rule_name: str, *, account: str, region: str) -> dict[str, Any]:
    event = _envelope("Scheduled Event", "aws.events", {}, account=account, region=region)
    event["resources"] = [f"arn:aws:events:{region}:{account}:rule/{rule_name}"]
    return event

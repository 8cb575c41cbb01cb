"""Reading a synthesized CloudFormation template in the infra tests."""

from __future__ import annotations

import json
from typing import Any


def as_list(value: Any) -> list[Any]:
    """IAM allows a single string where a list is meant (Action, Resource)."""
    return value if isinstance(value, list) else [value]


def render(value: Any) -> str:
    """A Fn::Join of strings and pseudo-parameter Refs as one string, e.g. ``arn:${AWS::Partition}:ec2:...``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        return "${" + str(value["Ref"]) + "}"
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(render(part) for part in parts)
    return json.dumps(value)


# The launch-source reads both enforcers hold (Describe calls: no resource-level permissions).
LAUNCH_SOURCE_READS = {
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeImages",
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeLaunchConfigurations",
}

"""Reading a synthesized CloudFormation template in the infra tests."""

from __future__ import annotations

import json
from typing import Any

from infra.constructs.permissions import DoorArns


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

# The IMDS doors' ARN patterns in us-east-1 of the test account, for the policy builders.
DOORS = DoorArns(
    notebook="arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/*",
    lightsail_instance="arn:aws:lightsail:us-east-1:123456789012:Instance/*",
    beanstalk_environment="arn:aws:elasticbeanstalk:us-east-1:123456789012:environment/*",
    eks_cluster="arn:aws:eks:us-east-1:123456789012:cluster/*",
    eks_nodegroup="arn:aws:eks:us-east-1:123456789012:nodegroup/*",
    ecs_capacity_provider="arn:aws:ecs:us-east-1:123456789012:capacity-provider/*",
    emr_cluster="arn:aws:elasticmapreduce:us-east-1:123456789012:cluster/*",
)

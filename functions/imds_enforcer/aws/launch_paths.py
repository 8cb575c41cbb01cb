"""Where a door's instances come from: one launch template version, the Auto Scaling groups a service created, a
launch configuration. Read only; the doors that name them (Batch, EKS, ECS) are checked in workflows.door_sweep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

if TYPE_CHECKING:
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef, LaunchConfigurationTypeDef
    from mypy_boto3_ec2.type_defs import LaunchTemplateVersionTypeDef

# What EC2 answers when a template or version named by a door no longer exists.
GONE_CODES = frozenset(
    {
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateName.NotFoundException",
        "InvalidLaunchTemplateId.VersionNotFound",
        "InvalidLaunchTemplateId.Malformed",
    }
)
# DescribeAutoScalingGroups takes at most 100 names (and answers 100 a page).
GROUP_NAMES_LIMIT = 100


def template_version(
    *, template_id: str | None, template_name: str | None, version: str
) -> LaunchTemplateVersionTypeDef | None:
    """One version ("$Default", "$Latest" or a number) of a template named by id or name; None when it is gone."""
    request: dict[str, Any] = {"Versions": [version]}
    if template_id:
        request["LaunchTemplateId"] = template_id
    else:
        request["LaunchTemplateName"] = template_name
    try:
        versions = clients.ec2().describe_launch_template_versions(**request).get("LaunchTemplateVersions", [])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in GONE_CODES:
            return None
        raise AwsError.from_client_error("DescribeLaunchTemplateVersions", error) from error
    return versions[0] if versions else None


def auto_scaling_groups(names: Sequence[str]) -> list[AutoScalingGroupTypeDef]:
    found: list[AutoScalingGroupTypeDef] = []
    paginator = clients.autoscaling().get_paginator("describe_auto_scaling_groups")
    unique = list(dict.fromkeys(names))
    with translated("DescribeAutoScalingGroups"):
        for start in range(0, len(unique), GROUP_NAMES_LIMIT):
            for page in paginator.paginate(AutoScalingGroupNames=unique[start : start + GROUP_NAMES_LIMIT]):
                found.extend(page.get("AutoScalingGroups", []))
    return found


def launch_configuration(name: str) -> LaunchConfigurationTypeDef | None:
    with translated("DescribeLaunchConfigurations"):
        items = clients.autoscaling().describe_launch_configurations(LaunchConfigurationNames=[name])
    configurations = items.get("LaunchConfigurations", [])
    return configurations[0] if configurations else None

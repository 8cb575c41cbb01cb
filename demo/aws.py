"""What the demo reads back from the emulator: the fleet's metadata options and tags, and the reports on the topic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import boto3

from emulator.observe import Received

SERVICE_TAG_PREFIX = "imdsv2-enforcer:"


@dataclass(frozen=True)
class InstanceRow:
    instance_id: str
    name: str
    state: str
    tokens: str
    hop_limit: int
    endpoint: str
    tags: dict[str, str]


def snapshot(instance_ids: Sequence[str]) -> dict[str, InstanceRow]:
    """The instances as DescribeInstances shows them now (one call: the demo fleet is small)."""
    rows: dict[str, InstanceRow] = {}
    response = boto3.client("ec2").describe_instances(InstanceIds=list(instance_ids))
    for reservation in response["Reservations"]:
        for item in reservation["Instances"]:
            options = item.get("MetadataOptions", {})
            tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}
            rows[item["InstanceId"]] = InstanceRow(
                instance_id=item["InstanceId"],
                name=tags.get("Name", ""),
                state=item["State"]["Name"],
                tokens=options.get("HttpTokens", "?"),
                hop_limit=options.get("HttpPutResponseHopLimit", 0),
                endpoint=options.get("HttpEndpoint", "?"),
                tags=tags,
            )
    return rows


@dataclass(frozen=True)
class SourceRow:
    """A launch source as the API shows it now: a launch template (its default version), a launch configuration or
    an AMI. `setting` is what decides IMDSv1 for it (HttpTokens, or the AMI's ImdsSupport)."""

    kind: str
    resource_id: str
    name: str
    default_version: str
    setting: str
    used_by: str


def sources_snapshot(
    *, templates: Sequence[str], launch_configurations: Sequence[str], images: Sequence[str]
) -> dict[str, SourceRow]:
    """The launch sources now, keyed by template id, launch configuration name or AMI id (in that order)."""
    ec2 = boto3.client("ec2")
    autoscaling = boto3.client("autoscaling")
    users: dict[str, list[str]] = {}
    for group in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]:
        spec = group.get("LaunchTemplate") or {}
        source = spec.get("LaunchTemplateId") or group.get("LaunchConfigurationName")
        if source:
            version = f" ({spec['Version']})" if spec.get("Version") else ""
            users.setdefault(source, []).append(group["AutoScalingGroupName"] + version)

    rows: dict[str, SourceRow] = {}
    listed = ec2.describe_launch_templates(LaunchTemplateIds=list(templates))["LaunchTemplates"]
    by_id = {item["LaunchTemplateId"]: item for item in listed}
    for template_id in templates:
        item = by_id[template_id]
        [default] = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, Versions=["$Default"])[
            "LaunchTemplateVersions"
        ]
        tokens = default["LaunchTemplateData"].get("MetadataOptions", {}).get("HttpTokens", "not set")
        rows[template_id] = SourceRow(
            kind="launch template",
            resource_id=template_id,
            name=item.get("LaunchTemplateName", ""),
            default_version=f"{item.get('DefaultVersionNumber')} of {item.get('LatestVersionNumber')}",
            setting=f"HttpTokens {tokens}",
            used_by=", ".join(users.get(template_id, [])) or "-",
        )
    if launch_configurations:
        configs = autoscaling.describe_launch_configurations(LaunchConfigurationNames=list(launch_configurations))
        for config in configs["LaunchConfigurations"]:
            name = config["LaunchConfigurationName"]
            rows[name] = SourceRow(
                kind="launch configuration",
                resource_id=name,
                name=name,
                default_version="-",
                setting=f"HttpTokens {config.get('MetadataOptions', {}).get('HttpTokens', 'not set')}",
                used_by=", ".join(users.get(name, [])) or "-",
            )
    if images:
        for image in ec2.describe_images(ImageIds=list(images))["Images"]:
            rows[image["ImageId"]] = SourceRow(
                kind="AMI",
                resource_id=image["ImageId"],
                name=image.get("Name", ""),
                default_version="-",
                setting=f"ImdsSupport {image.get('ImdsSupport', 'not set')}",
                used_by="-",
            )
    return rows


def actions_by_resource(received: Sequence[Received]) -> dict[str, str]:
    return {finding["resource_id"]: finding["action"] for message in received for finding in message.findings}

"""The AWS permissions each Lambda needs, declared next to each other and built by plain functions.

Least privilege: every action is spelled out (no ``*`` in an action), modifications are limited to EC2
instances of this account and region, and tagging is limited to the tag keys the service writes. Launch sources
(launch templates, AMIs) are only read unless the operator opts in to fixing them.
Publishing to the report topic is granted separately (``ReportTopic.grant_publish``), and never to the Slack notifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct

from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG


@dataclass(frozen=True, slots=True)
class ResourceArns:
    """The ARN patterns this stack's writes are scoped to: this account's and region's instances, launch templates
    and AMIs (AMI ARNs carry no account: arn:<partition>:ec2:<region>::image/<id>)."""

    instance: str
    launch_template: str
    image: str

    @classmethod
    def of(cls, scope: Construct) -> ResourceArns:
        stack = cdk.Stack.of(scope)
        return cls(
            instance=stack.format_arn(service="ec2", resource="instance", resource_name="*"),
            launch_template=stack.format_arn(service="ec2", resource="launch-template", resource_name="*"),
            image=stack.format_arn(service="ec2", resource="image", resource_name="*", account=""),
        )


SERVICE_TAG_KEYS: tuple[str, str] = (ENFORCED_AT_TAG, ENFORCED_BY_TAG)

# These actions support no resource-level permissions: IAM only accepts "*" as their resource.
UNSCOPABLE_ACTIONS = frozenset(
    {
        "ec2:DescribeInstances",
        "cloudwatch:GetMetricData",
        "ec2:GetInstanceMetadataDefaults",
        "ec2:ModifyInstanceMetadataDefaults",
        # Where new instances come from: the Describe/List calls of EC2 and Auto Scaling accept no resource ARN.
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:DescribeImages",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeLaunchConfigurations",
    }
)


def _describe_instances() -> iam.PolicyStatement:
    return iam.PolicyStatement(sid="DescribeInstances", actions=["ec2:DescribeInstances"], resources=["*"])


def _modify_metadata_options(instance_arn: str) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        sid="RequireImdsv2OnInstances", actions=["ec2:ModifyInstanceMetadataOptions"], resources=[instance_arn]
    )


def _tag_instances(instance_arn: str, tag_keys: Sequence[str]) -> iam.PolicyStatement:
    # ForAllValues: every key in the request must be one of ours, so the role cannot rewrite anyone else's tags.
    return iam.PolicyStatement(
        sid="TagEnforcedInstances",
        actions=["ec2:CreateTags"],
        resources=[instance_arn],
        conditions={"ForAllValues:StringEquals": {"aws:TagKeys": list(tag_keys)}},
    )


def launch_source_statements(
    *, launch_template_arn: str, image_arn: str, fix_launch_templates: bool, fix_images: bool
) -> list[iam.PolicyStatement]:
    """Read launch templates, launch configurations (and the groups using them) and AMIs; fix them only on opt-in.

    A launch template is fixed by a new version that requires IMDSv2, made the default (ModifyLaunchTemplate);
    an AMI by ``ImdsSupport=v2.0`` (ModifyImageAttribute), which cannot be undone. Launch configurations are
    immutable, so they are only ever read and flagged. ``image_arn`` has no account (AMI ARNs carry none).
    """
    statements = [
        iam.PolicyStatement(
            sid="DescribeLaunchSources",
            actions=[
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeImages",
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeLaunchConfigurations",
            ],
            resources=["*"],
        )
    ]
    if fix_launch_templates:
        statements.append(
            iam.PolicyStatement(
                sid="RequireImdsv2OnLaunchTemplates",
                actions=["ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"],
                resources=[launch_template_arn],
            )
        )
    if fix_images:
        statements.append(
            iam.PolicyStatement(
                sid="RequireImdsv2OnImages", actions=["ec2:ModifyImageAttribute"], resources=[image_arn]
            )
        )
    return statements


def launch_watch_statements(
    *,
    instance_arn: str,
    launch_template_arn: str,
    image_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
) -> list[iam.PolicyStatement]:
    """Read a launched instance's options; in fix mode require IMDSv2 and tag who did it and when.

    The watch also hears launch templates, launch configurations and AMIs being created, so it reads (and, on
    opt-in, fixes) those too.
    """
    return [
        _describe_instances(),
        _modify_metadata_options(instance_arn),
        _tag_instances(instance_arn, SERVICE_TAG_KEYS),
        *launch_source_statements(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
    ]


def usage_gate_statements(
    *,
    instance_arn: str,
    exempt_tag_key: str,
    set_account_default: bool,
    launch_template_arn: str,
    image_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
) -> list[iam.PolicyStatement]:
    """Sweep instances, read their IMDSv1 usage, switch the ready ones, roll back (tagging the exemption).

    The sweep also checks the launch sources that would bring new IMDSv1 instances (see launch_source_statements).
    """
    statements = [
        _describe_instances(),
        iam.PolicyStatement(sid="ReadMetadataUsage", actions=["cloudwatch:GetMetricData"], resources=["*"]),
        _modify_metadata_options(instance_arn),
        # A rollback writes the exemption tag (reason and date), so the gate never switches that instance again.
        _tag_instances(instance_arn, [*SERVICE_TAG_KEYS, exempt_tag_key]),
        *launch_source_statements(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
    ]
    if set_account_default:
        # Opt-in only: changing the account default affects every future launch in the region.
        statements.append(
            iam.PolicyStatement(
                sid="SetAccountMetadataDefaults",
                actions=["ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"],
                resources=["*"],
            )
        )
    return statements


def slack_notifier_statements(*, secret_arn: str, kms_key_arn: str, secret_region: str) -> list[iam.PolicyStatement]:
    """Read the one webhook secret; decrypt with its customer managed key only when one is configured.

    ``secret_region`` limits the key to Secrets Manager's use of it (kms:ViaService): the role cannot decrypt
    anything else the key protects.
    """
    statements = [
        iam.PolicyStatement(
            sid="ReadSlackWebhookSecret", actions=["secretsmanager:GetSecretValue"], resources=[secret_arn]
        )
    ]
    if kms_key_arn:
        statements.append(
            iam.PolicyStatement(
                sid="DecryptSlackWebhookSecret",
                actions=["kms:Decrypt"],
                resources=[kms_key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{secret_region}.amazonaws.com"}},
            )
        )
    return statements

"""The AWS permissions each Lambda needs, declared next to each other and built by plain functions.

Least privilege: every action is spelled out (no ``*`` in an action), modifications are limited to EC2
instances of this account and region, and tagging is limited to the tag keys the service writes. Launch sources
(launch templates, AMIs) are only read unless the operator opts in to fixing them.
Publishing to the report topic is granted separately (``ReportTopic.grant_publish``), and never to the Slack notifier.

Each statement travels with the reason its wildcard resources are needed: ``EnforcerFunction`` acknowledges the
cdk-nag finding (AwsSolutions-IAM5) for exactly those resources, with that reason, so a new wildcard without a
reason fails synth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct

from imds_enforcer.domain.organization import AUDIT_READ_ACTIONS
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG


@dataclass(frozen=True, slots=True)
class Permission:
    """One IAM statement and, when a resource in it is a wildcard, why (the cdk-nag acknowledgement's reason)."""

    statement: iam.PolicyStatement
    wildcard_reason: str = ""


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
        # The organization audit lists an account's enabled regions (--all-regions).
        "ec2:DescribeRegions",
    }
)
_NO_RESOURCE_LEVEL = "supports no resource-level permissions; IAM only accepts Resource '*' for it."


def _unscopable(sid: str, actions: Sequence[str]) -> Permission:
    assert set(actions) <= UNSCOPABLE_ACTIONS, f"{sorted(set(actions) - UNSCOPABLE_ACTIONS)} can be scoped"
    return Permission(
        iam.PolicyStatement(sid=sid, actions=list(actions), resources=["*"]),
        f"{', '.join(actions)}: each {_NO_RESOURCE_LEVEL}",
    )


def _describe_instances() -> Permission:
    return _unscopable("DescribeInstances", ["ec2:DescribeInstances"])


def _modify_metadata_options(instance_arn: str) -> Permission:
    return Permission(
        iam.PolicyStatement(
            sid="RequireImdsv2OnInstances", actions=["ec2:ModifyInstanceMetadataOptions"], resources=[instance_arn]
        ),
        "Any instance of this account and region may be launched, regress or be swept, so "
        "ModifyInstanceMetadataOptions is scoped to instance/* here (not to other resource types).",
    )


def _tag_instances(instance_arn: str, tag_keys: Sequence[str]) -> Permission:
    # ForAllValues: every key in the request must be one of ours, so the role cannot rewrite anyone else's tags.
    return Permission(
        iam.PolicyStatement(
            sid="TagEnforcedInstances",
            actions=["ec2:CreateTags"],
            resources=[instance_arn],
            conditions={"ForAllValues:StringEquals": {"aws:TagKeys": list(tag_keys)}},
        ),
        "CreateTags on instance/* of this account and region is limited by aws:TagKeys to the tag keys the service "
        f"writes ({', '.join(tag_keys)}).",
    )


def launch_source_permissions(
    *, launch_template_arn: str, image_arn: str, fix_launch_templates: bool, fix_images: bool
) -> list[Permission]:
    """Read launch templates, launch configurations (and the groups using them) and AMIs; fix them only on opt-in.

    A launch template is fixed by a new version that requires IMDSv2, made the default (ModifyLaunchTemplate);
    an AMI by ``ImdsSupport=v2.0`` (ModifyImageAttribute), which cannot be undone. Launch configurations are
    immutable, so they are only ever read and flagged. ``image_arn`` has no account (AMI ARNs carry none).
    """
    permissions = [
        _unscopable(
            "DescribeLaunchSources",
            [
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeImages",
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeLaunchConfigurations",
            ],
        )
    ]
    if fix_launch_templates:
        permissions.append(
            Permission(
                iam.PolicyStatement(
                    sid="RequireImdsv2OnLaunchTemplates",
                    actions=["ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"],
                    resources=[launch_template_arn],
                ),
                "Opt-in (fix_launch_templates): the template can be any of this account and region, so "
                "CreateLaunchTemplateVersion and ModifyLaunchTemplate are scoped to launch-template/* here only.",
            )
        )
    if fix_images:
        permissions.append(
            Permission(
                iam.PolicyStatement(
                    sid="RequireImdsv2OnImages", actions=["ec2:ModifyImageAttribute"], resources=[image_arn]
                ),
                "Opt-in (fix_images): the AMI can be any of this region's, so ModifyImageAttribute is scoped to "
                "image/* of this region (AMI ARNs carry no account; only the owner may modify one).",
            )
        )
    return permissions


def launch_watch_permissions(
    *,
    instance_arn: str,
    launch_template_arn: str,
    image_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
) -> list[Permission]:
    """Read a launched instance's options; in fix mode require IMDSv2 and tag who did it and when.

    The watch also hears launch templates, launch configurations and AMIs being created, so it reads (and, on
    opt-in, fixes) those too.
    """
    return [
        _describe_instances(),
        _modify_metadata_options(instance_arn),
        _tag_instances(instance_arn, SERVICE_TAG_KEYS),
        *launch_source_permissions(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
    ]


def usage_gate_permissions(
    *,
    instance_arn: str,
    exempt_tag_key: str,
    set_account_default: bool,
    launch_template_arn: str,
    image_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
) -> list[Permission]:
    """Sweep instances, read their IMDSv1 usage, switch the ready ones, roll back (tagging the exemption).

    The sweep also checks the launch sources that would bring new IMDSv1 instances (see launch_source_permissions).
    """
    permissions = [
        _describe_instances(),
        _unscopable("ReadMetadataUsage", ["cloudwatch:GetMetricData"]),
        _modify_metadata_options(instance_arn),
        # A rollback writes the exemption tag (reason and date), so the gate never switches that instance again.
        _tag_instances(instance_arn, [*SERVICE_TAG_KEYS, exempt_tag_key]),
        *launch_source_permissions(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
    ]
    if set_account_default:
        # Opt-in only: changing the account default affects every future launch in the region.
        permissions.append(
            _unscopable(
                "SetAccountMetadataDefaults", ["ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"]
            )
        )
    return permissions


def slack_notifier_permissions(*, secret_arn: str, kms_key_arn: str, secret_region: str) -> list[Permission]:
    """Read the one webhook secret; decrypt with its customer managed key only when one is configured.

    ``secret_region`` limits the key to Secrets Manager's use of it (kms:ViaService): the role cannot decrypt
    anything else the key protects.
    """
    permissions = [
        Permission(
            iam.PolicyStatement(
                sid="ReadSlackWebhookSecret", actions=["secretsmanager:GetSecretValue"], resources=[secret_arn]
            )
        )
    ]
    if kms_key_arn:
        permissions.append(
            Permission(
                iam.PolicyStatement(
                    sid="DecryptSlackWebhookSecret",
                    actions=["kms:Decrypt"],
                    resources=[kms_key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{secret_region}.amazonaws.com"}},
                )
            )
        )
    return permissions


def audit_permissions() -> list[Permission]:
    """The member accounts' audit role (organization mode): exactly what `imds-enforcer audit --org` reads there
    (declared once, in the domain, and measured by a test), nothing that writes."""
    return [_unscopable("ReadImdsPosture", AUDIT_READ_ACTIONS)]


def central_report_permissions(*, topic_arn: str, key_arn: str, key_alias: str, region: str) -> list[Permission]:
    """Publish to the security account's report topic (organization mode), and use its key for that only.

    Across accounts the key policy (in the security account) and this identity policy must both allow it. The key's
    id is generated over there, so ``key_arn`` ends in ``key/*``: ``kms:ResourceAliases`` pins it to the one key
    under ``key_alias``, and ``kms:ViaService`` to SNS's use of it in that region.
    """
    return [
        Permission(
            iam.PolicyStatement(sid="PublishToOrganizationTopic", actions=["sns:Publish"], resources=[topic_arn])
        ),
        Permission(
            iam.PolicyStatement(
                sid="UseOrganizationTopicKey",
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[key_arn],
                conditions={
                    "ForAnyValue:StringEquals": {"kms:ResourceAliases": [key_alias]},
                    "StringEquals": {"kms:ViaService": f"sns.{region}.{cdk.Aws.URL_SUFFIX}"},
                },
            ),
            f"The organization's report key is created in the security account with a generated id: the grant names "
            f"key/* there, and kms:ResourceAliases pins it to the key under {key_alias} (kms:ViaService to SNS).",
        ),
    ]

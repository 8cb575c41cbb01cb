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
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct

from imds_enforcer.domain.callers import CALLER_ANALYSIS_TAG, CALLER_ANALYSIS_TAG_KEYS
from imds_enforcer.domain.organization import AUDIT_READ_ACTIONS
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, PREPARED_AT_TAG, CallerAnalysis


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

    @staticmethod
    def parameter(scope: Construct, name: str) -> str:
        """An SSM parameter of this account and region (its name with or without the leading slash); "" for none."""
        if not name:
            return ""
        return cdk.Stack.of(scope).format_arn(service="ssm", resource="parameter", resource_name=name.lstrip("/"))

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
        # The IMDS doors outside EC2 instances: their listings (and EMR's security configurations) take no ARN.
        "sagemaker:ListNotebookInstances",
        "lightsail:GetInstances",
        "batch:DescribeComputeEnvironments",
        "eks:ListClusters",
        "elasticmapreduce:ListClusters",
        "elasticmapreduce:DescribeSecurityConfiguration",
        # The caller analysis: which instances SSM manages, and a command's result, are not resource-scoped.
        "ssm:DescribeInstanceInformation",
        "ssm:GetCommandInvocation",
        # The organization audit lists an account's enabled regions (--all-regions).
        "ec2:DescribeRegions",
    }
)
_NO_RESOURCE_LEVEL = "supports no resource-level permissions; IAM only accepts Resource '*' for it."


def _unscopable(sid: str, actions: Sequence[str]) -> Permission:
    assert set(actions) <= UNSCOPABLE_ACTIONS, f"{sorted(set(actions) - UNSCOPABLE_ACTIONS)} can be scoped"
    return Permission(
        iam.PolicyStatement(sid=sid, actions=list(actions), resources=["*"]),
        f"{', '.join(actions)}: {'each ' if len(actions) > 1 else ''}{_NO_RESOURCE_LEVEL}",
    )


def _describe_instances() -> Permission:
    return _unscopable("DescribeInstances", ["ec2:DescribeInstances"])


def _read_metadata_usage() -> Permission:
    return _unscopable("ReadMetadataUsage", ["cloudwatch:GetMetricData"])


def _read_account_default() -> Permission:
    return _unscopable("ReadAccountMetadataDefaults", ["ec2:GetInstanceMetadataDefaults"])


def _rollback(instance_arn: str, exempt_tag_key: str) -> list[Permission]:
    """A rollback sets the instance back to optional and writes the exemption tag; it first reads the account default
    (AWS refuses optional while it enforces IMDSv2). The role can set nothing but optional."""
    return [
        _modify_metadata_options(instance_arn),
        _only_tokens(instance_arn, "optional", "OnlyRollBack"),
        _tag_instances(instance_arn, [exempt_tag_key]),
        _read_account_default(),
    ]


def _modify_metadata_options(instance_arn: str) -> Permission:
    return Permission(
        iam.PolicyStatement(
            sid="RequireImdsv2OnInstances", actions=["ec2:ModifyInstanceMetadataOptions"], resources=[instance_arn]
        ),
        "Any instance of this account and region may be launched, regress or be swept, so "
        "ModifyInstanceMetadataOptions is scoped to instance/* here (not to other resource types).",
    )


# What a role may ask of ModifyInstanceMetadataOptions, enforced by IAM rather than trusted to the code. The Service
# Authorization Reference (Amazon EC2, "Actions defined by Amazon EC2", ModifyInstanceMetadataOptions) lists, on its
# `instance` resource, aws:ResourceTag/${TagKey} (the instance's tags when the request is evaluated) and
# ec2:Attribute/${AttributeName} (the value the request sets: ec2:Attribute/HttpTokens, as in AWS's example policy
# "Deny opt-out of IMDSv2"). ec2:MetadataHttpTokens is an instance key there (what the instance has), so it cannot
# say what a request asks. Without a Null guard, StringNotEquals is also true when the request omits HttpTokens:
# such a role cannot make any other kind of change either.


def _deny_exempt_instances(instance_arn: str, exempt_tag_key: str, *, allow_rollback: bool) -> Permission:
    """An instance carrying the exemption tag cannot be changed by this role, even when someone tagged it after the
    run read it (the tag is evaluated at the modify). With rollback on, setting HttpTokens=optional stays allowed:
    the rollback tags the instance exempt first, then sets it optional."""
    condition: dict[str, Any] = {"Null": {f"aws:ResourceTag/{exempt_tag_key}": "false"}}
    if allow_rollback:
        condition["StringNotEquals"] = {"ec2:Attribute/HttpTokens": "optional"}
    return Permission(
        iam.PolicyStatement(
            sid="KeepOffExemptInstances",
            effect=iam.Effect.DENY,
            actions=["ec2:ModifyInstanceMetadataOptions"],
            resources=[instance_arn],
            conditions=condition,
        )
    )


def _only_tokens(instance_arn: str, tokens: str, sid: str) -> Permission:
    """Every ModifyInstanceMetadataOptions of this role sets HttpTokens to `tokens` (no Null guard: one that omits
    HttpTokens is refused too)."""
    return Permission(
        iam.PolicyStatement(
            sid=sid,
            effect=iam.Effect.DENY,
            actions=["ec2:ModifyInstanceMetadataOptions"],
            resources=[instance_arn],
            conditions={"StringNotEquals": {"ec2:Attribute/HttpTokens": tokens}},
        )
    )


def _never_optional(instance_arn: str) -> Permission:
    """Without rollback, nothing of this role's may set HttpTokens=optional (hop-limit-only calls stay allowed:
    StringEquals is false when the request omits HttpTokens)."""
    return Permission(
        iam.PolicyStatement(
            sid="NeverAllowImdsv1",
            effect=iam.Effect.DENY,
            actions=["ec2:ModifyInstanceMetadataOptions"],
            resources=[instance_arn],
            conditions={"StringEquals": {"ec2:Attribute/HttpTokens": "optional"}},
        )
    )


def _exemptions(
    instance_arn: str, exempt_tag_key: str, exemption_parameter_arn: str, *, rollback: bool
) -> list[Permission]:
    """Who is exempt. With the central list (an SSM parameter), read exactly that parameter: the list replaces the
    tag, so IAM cannot hold the exemption (it cannot read the list; the run reads it once, at its start). Without it,
    IAM holds the tag's exemption at the very moment of each modify."""
    if exemption_parameter_arn:
        return [
            Permission(
                iam.PolicyStatement(
                    sid="ReadExemptionList", actions=["ssm:GetParameter"], resources=[exemption_parameter_arn]
                )
            )
        ]
    return [_deny_exempt_instances(instance_arn, exempt_tag_key, allow_rollback=rollback)]


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


@dataclass(frozen=True, slots=True)
class DoorArns:
    """The ARN patterns of the IMDS doors outside EC2 instances, in this account and region."""

    notebook: str
    lightsail_instance: str
    beanstalk_environment: str
    eks_cluster: str
    eks_nodegroup: str
    ecs_capacity_provider: str
    emr_cluster: str

    @classmethod
    def of(cls, scope: Construct, *, any_region: bool = False) -> DoorArns:
        """`any_region`: in every region of the account (the organization audit role: one role, every region)."""
        stack = cdk.Stack.of(scope)

        def arn(service: str, resource: str) -> str:
            region = "*" if any_region else None
            return stack.format_arn(service=service, resource=resource, resource_name="*", region=region)

        return cls(
            notebook=arn("sagemaker", "notebook-instance"),
            lightsail_instance=arn("lightsail", "Instance"),
            beanstalk_environment=arn("elasticbeanstalk", "environment"),
            eks_cluster=arn("eks", "cluster"),
            eks_nodegroup=arn("eks", "nodegroup"),
            ecs_capacity_provider=arn("ecs", "capacity-provider"),
            emr_cluster=arn("elasticmapreduce", "cluster"),
        )


def _scoped(sid: str, actions: Sequence[str], resource: str, reason: str) -> Permission:
    return Permission(iam.PolicyStatement(sid=sid, actions=list(actions), resources=[resource]), reason)


def door_permissions(
    *, arns: DoorArns, fix_sagemaker_notebooks: bool, fix_lightsail_instances: bool
) -> list[Permission]:
    """Read the IMDS doors outside EC2 instances (SageMaker notebooks, Lightsail, Elastic Beanstalk, Batch, EKS,
    ECS, EMR; the launch templates, groups and launch configurations they name are read by the launch-source
    statement); change only SageMaker notebooks and Lightsail instances, each on its own opt-in. The others are
    never changed: no write of theirs is granted.
    """
    any_of = "can be any of this account and region, so it is scoped to {what}/* here (not to other resource types)."
    permissions = [
        _unscopable(
            "ListImdsDoors",
            [
                "sagemaker:ListNotebookInstances",
                "lightsail:GetInstances",
                "batch:DescribeComputeEnvironments",
                "eks:ListClusters",
                "elasticmapreduce:ListClusters",
                "elasticmapreduce:DescribeSecurityConfiguration",
            ],
        ),
        _scoped(
            "ReadSageMakerNotebooks",
            ["sagemaker:DescribeNotebookInstance", "sagemaker:ListTags"],
            arns.notebook,
            "A notebook instance " + any_of.format(what="notebook-instance"),
        ),
        _scoped(
            "ReadLightsailInstances",
            ["lightsail:GetInstance"],
            arns.lightsail_instance,
            "A Lightsail instance " + any_of.format(what="Instance"),
        ),
        _scoped(
            "ReadBeanstalkEnvironments",
            ["elasticbeanstalk:DescribeEnvironments", "elasticbeanstalk:DescribeConfigurationSettings"],
            arns.beanstalk_environment,
            "An Elastic Beanstalk environment (application/environment) " + any_of.format(what="environment"),
        ),
        _scoped(
            "ListEksNodegroups",
            ["eks:ListNodegroups"],
            arns.eks_cluster,
            "An EKS cluster " + any_of.format(what="cluster"),
        ),
        _scoped(
            "ReadEksNodegroups",
            ["eks:DescribeNodegroup"],
            arns.eks_nodegroup,
            "An EKS node group (cluster/name/id) " + any_of.format(what="nodegroup"),
        ),
        _scoped(
            "ReadEcsCapacityProviders",
            ["ecs:DescribeCapacityProviders"],
            arns.ecs_capacity_provider,
            "An ECS capacity provider " + any_of.format(what="capacity-provider"),
        ),
        _scoped(
            "ReadEmrClusters",
            ["elasticmapreduce:DescribeCluster"],
            arns.emr_cluster,
            "An EMR cluster " + any_of.format(what="cluster"),
        ),
    ]
    if fix_sagemaker_notebooks:
        permissions.append(
            _scoped(
                "RequireImdsv2OnSageMakerNotebooks",
                ["sagemaker:UpdateNotebookInstance"],
                arns.notebook,
                "Opt-in (fix_sagemaker_notebooks): the notebook " + any_of.format(what="notebook-instance"),
            )
        )
    if fix_lightsail_instances:
        permissions.append(
            _scoped(
                "RequireImdsv2OnLightsailInstances",
                ["lightsail:UpdateInstanceMetadataOptions"],
                arns.lightsail_instance,
                "Opt-in (fix_lightsail_instances): the instance " + any_of.format(what="Instance"),
            )
        )
    return permissions


def caller_analysis_permissions(*, mode: CallerAnalysis, document_arn: str, instance_arn: str) -> list[Permission]:
    """Read analyses (`read`, `run`); find managed instances and send the stack's analyzer document (`run`).

    ssm:SendCommand authorizes the document and each instance separately: the document statement names this
    stack's document only, and the instance statement allows only instances that carry the selection tag
    `imdsv2-enforcer:caller-analysis`, which the gate sets on an instance right before it sends (condition key
    ssm:resourceTag, as AWS's Run Command guide restricts commands by instance tags).
    """
    if mode is CallerAnalysis.OFF:
        return []
    permissions = [_unscopable("ReadCallerAnalyses", ["ssm:GetCommandInvocation"])]
    if mode is CallerAnalysis.RUN:
        permissions += [
            _unscopable("FindManagedInstances", ["ssm:DescribeInstanceInformation"]),
            Permission(
                iam.PolicyStatement(sid="SendAnalyzerDocument", actions=["ssm:SendCommand"], resources=[document_arn])
            ),
            Permission(
                iam.PolicyStatement(
                    sid="SendAnalyzerToSelectedInstances",
                    actions=["ssm:SendCommand"],
                    resources=[instance_arn],
                    conditions={"StringLike": {f"ssm:resourceTag/{CALLER_ANALYSIS_TAG}": "*"}},
                ),
                "SendCommand reaches only instances of this account and region that carry the selection tag "
                f"{CALLER_ANALYSIS_TAG} (ssm:resourceTag condition), which the gate sets when it selects a blocked "
                "instance; the document itself is limited to this stack's analyzer document.",
            ),
        ]
    return permissions


def launch_watch_permissions(
    *,
    instance_arn: str,
    exempt_tag_key: str,
    exemption_parameter_arn: str = "",
    launch_template_arn: str,
    image_arn: str,
    ledger_table_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
    doors: DoorArns,
    fix_sagemaker_notebooks: bool = False,
    fix_lightsail_instances: bool = False,
) -> list[Permission]:
    """Read a launched instance's options (and, for a restart or a set-back, its usage history); in fix mode require
    IMDSv2 and tag who did it and when; remember each verdict in the ledger table, so a restart is reported only when
    its verdict changed.

    The watch also hears launch templates, launch configurations and AMIs being created, so it reads (and, on
    opt-in, fixes) those too; and the IMDS doors outside EC2 instances that CloudTrail events name.
    """
    return [
        _describe_instances(),
        _read_metadata_usage(),
        _modify_metadata_options(instance_arn),
        # It only ever requires IMDSv2 (a container host's hop limit rides in the same call), never on an exempt one.
        _only_tokens(instance_arn, "required", "OnlyRequireImdsv2"),
        *_exemptions(instance_arn, exempt_tag_key, exemption_parameter_arn, rollback=False),
        _tag_instances(instance_arn, SERVICE_TAG_KEYS),
        Permission(
            iam.PolicyStatement(
                sid="ReadWriteLedger",
                # PutItem: each switch's conditional record; the batches: verdicts, and settling the records.
                actions=["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem"],
                resources=[ledger_table_arn],
            )
        ),
        *launch_source_permissions(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
        *door_permissions(
            arns=doors,
            fix_sagemaker_notebooks=fix_sagemaker_notebooks,
            fix_lightsail_instances=fix_lightsail_instances,
        ),
    ]


def _switch_records(ledger_table_arn: str, pending_index_arn: str) -> list[Permission]:
    """The gate's part of the switch records: record its own (conditional PutItem), read the open ones (the sparse
    index), settle them (BatchWriteItem) and read one another run holds (BatchGetItem)."""
    return [
        Permission(
            iam.PolicyStatement(
                sid="RecordSwitches",
                actions=["dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem"],
                resources=[ledger_table_arn],
            )
        ),
        Permission(
            iam.PolicyStatement(sid="ReadOpenSwitches", actions=["dynamodb:Query"], resources=[pending_index_arn])
        ),
    ]


def usage_gate_permissions(
    *,
    instance_arn: str,
    exempt_tag_key: str,
    exemption_parameter_arn: str = "",
    set_account_default: bool,
    rollback: bool,
    launch_template_arn: str,
    image_arn: str,
    fix_launch_templates: bool,
    fix_images: bool,
    doors: DoorArns,
    fix_sagemaker_notebooks: bool = False,
    fix_lightsail_instances: bool = False,
    caller_analysis: CallerAnalysis = CallerAnalysis.OFF,
    analyzer_document_arn: str = "",
    ledger_table_arn: str,
    pending_index_arn: str,
) -> list[Permission]:
    """Sweep instances, read their IMDSv1 usage, switch the ready ones, prepare container hosts (hop limit, tagged
    prepared-at), roll back (opt-in: tagging the exemption), and keep every switch on the record.

    The sweep also checks the launch sources that would bring new IMDSv1 instances (see launch_source_permissions)
    and the IMDS doors outside EC2 instances (door_permissions); opt-in, it names the processes that make a blocked
    instance's IMDSv1 calls (caller_analysis_permissions, and the two analysis tags).
    """
    tag_keys = [*SERVICE_TAG_KEYS, PREPARED_AT_TAG]
    if rollback:
        # A rollback writes the exemption tag (reason and date), so the gate never switches that instance again.
        tag_keys.append(exempt_tag_key)
    if caller_analysis is CallerAnalysis.RUN:
        # A caller analysis tags the instances it selects (its SendCommand condition) and the command it sent them.
        tag_keys += CALLER_ANALYSIS_TAG_KEYS
    permissions = [
        _describe_instances(),
        _read_metadata_usage(),
        _modify_metadata_options(instance_arn),
        # Enforce (required) and prepare (hop limit only) never touch an exempt instance; only a rollback sets optional.
        *_exemptions(instance_arn, exempt_tag_key, exemption_parameter_arn, rollback=rollback),
        *([] if rollback else [_never_optional(instance_arn)]),
        _tag_instances(instance_arn, tag_keys),
        *_switch_records(ledger_table_arn, pending_index_arn),
        *launch_source_permissions(
            launch_template_arn=launch_template_arn,
            image_arn=image_arn,
            fix_launch_templates=fix_launch_templates,
            fix_images=fix_images,
        ),
        *door_permissions(
            arns=doors,
            fix_sagemaker_notebooks=fix_sagemaker_notebooks,
            fix_lightsail_instances=fix_lightsail_instances,
        ),
        *caller_analysis_permissions(
            mode=caller_analysis, document_arn=analyzer_document_arn, instance_arn=instance_arn
        ),
    ]
    if set_account_default:
        # Opt-in only: changing the account default affects every future launch in the region.
        permissions.append(
            _unscopable(
                "SetAccountMetadataDefaults", ["ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"]
            )
        )
    elif rollback:
        # A rollback first reads the account default: AWS refuses optional while it enforces IMDSv2.
        permissions.append(_read_account_default())
    return permissions


def gate_continuation_permissions(
    *, bucket_arn: str, state_prefix: str, schedule_arns: str, scheduler_role_arn: str
) -> list[Permission]:
    """The usage gate's continuation: read, write and delete its sweep object (under one prefix of the stack's own
    bucket; listing the bucket only so a missing object reads as 404, not 403), create one-time schedules in the
    stack's own schedule group, and hand those schedules the stack's scheduler role (and no other role, to no other
    service)."""
    return [
        Permission(
            iam.PolicyStatement(
                sid="SweepStateObject",
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[f"{bucket_arn}/{state_prefix}*"],
            ),
            f"The sweep state lives under {state_prefix} of the stack's own sweep bucket; the wildcard is that prefix.",
        ),
        Permission(iam.PolicyStatement(sid="SweepBucketListing", actions=["s3:ListBucket"], resources=[bucket_arn])),
        Permission(
            iam.PolicyStatement(
                sid="ScheduleContinuations", actions=["scheduler:CreateSchedule"], resources=[schedule_arns]
            ),
            "Each continuation is a new one-time schedule named after its sweep and run, so CreateSchedule is "
            "allowed on the schedules of the stack's own schedule group only (schedule/<group>/*).",
        ),
        Permission(
            iam.PolicyStatement(
                sid="PassSchedulerRole",
                actions=["iam:PassRole"],
                resources=[scheduler_role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
            )
        ),
    ]


def rejection_watch_permissions(
    *, instance_arn: str, exempt_tag_key: str, rollback: bool, ledger_table_arn: str, exemption_parameter_arn: str = ""
) -> list[Permission]:
    """Find the instances rejecting IMDSv1 calls (one Metrics Insights query), read them, and (opt-in) roll back the
    ones this service switched (an untagged one is known by its switch record): nothing else."""
    permissions = [_describe_instances(), _read_metadata_usage()]
    if rollback:
        permissions += _rollback(instance_arn, exempt_tag_key)
        permissions.append(
            Permission(
                iam.PolicyStatement(
                    sid="ReadSwitchRecords", actions=["dynamodb:BatchGetItem"], resources=[ledger_table_arn]
                )
            )
        )
        if exemption_parameter_arn:
            permissions += _exemptions(instance_arn, exempt_tag_key, exemption_parameter_arn, rollback=True)
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


def audit_permissions(doors: DoorArns) -> list[Permission]:
    """The member accounts' audit role (organization mode): exactly what `imds-enforcer audit --org` reads there
    (declared once, in the domain, and measured by a test), nothing that writes. The reads IAM can scope (one IMDS
    door of a kind) are scoped to their resource type, in every region (`doors`: the role audits them all)."""
    doors_read = door_permissions(arns=doors, fix_sagemaker_notebooks=False, fix_lightsail_instances=False)
    scoped = [permission for permission in doors_read if permission.statement.resources != ["*"]]
    scoped_actions = {action for permission in scoped for action in permission.statement.actions}
    unscoped = [action for action in AUDIT_READ_ACTIONS if action not in scoped_actions]
    return [_unscopable("ReadImdsPosture", unscoped), *scoped]


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

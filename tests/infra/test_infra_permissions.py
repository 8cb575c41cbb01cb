"""The policy builders: least privilege, decided without a synth."""

from __future__ import annotations

from typing import Any

import pytest

from imds_enforcer.domain.settings import CallerAnalysis
from infra.constructs.permissions import (
    UNSCOPABLE_ACTIONS,
    launch_watch_permissions,
    rejection_watch_permissions,
    slack_notifier_permissions,
    usage_gate_permissions,
)
from tests.infra.template_helpers import DOORS, LAUNCH_SOURCE_READS, as_list

INSTANCE_ARN = "arn:aws:ec2:us-east-1:123456789012:instance/*"
LAUNCH_TEMPLATE_ARN = "arn:aws:ec2:us-east-1:123456789012:launch-template/*"
IMAGE_ARN = "arn:aws:ec2:us-east-1::image/*"
TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/imds-enforcer-state"
METADATA_DEFAULTS = {"ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"}
LAUNCH_TEMPLATE_WRITES = {"ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"}
IMAGE_WRITES = {"ec2:ModifyImageAttribute"}
DOCUMENT_ARN = "arn:aws:ssm:us-east-1:123456789012:document/ImdsEnforcer-us-east-1-ImdsPacketAnalyzer"
DOOR_WRITES = {"sagemaker:UpdateNotebookInstance", "lightsail:UpdateInstanceMetadataOptions"}
CALLER_ANALYSIS_ACTIONS = {"ssm:GetCommandInvocation", "ssm:DescribeInstanceInformation", "ssm:SendCommand"}
# Every combination of the opt-ins: the least-privilege rules must hold in each.
OPT_INS = [
    {
        "set_account_default": a,
        "rollback": r,
        "fix_launch_templates": t,
        "fix_images": i,
        "fix_sagemaker_notebooks": d,
        "fix_lightsail_instances": d,
        "caller_analysis": c,
    }
    for a in (False, True)
    for r in (False, True)
    for t in (False, True)
    for i in (False, True)
    for d in (False, True)
    for c in CallerAnalysis
]


def _statements(
    set_account_default: bool = False,
    rollback: bool = False,
    fix_launch_templates: bool = False,
    fix_images: bool = False,
    fix_sagemaker_notebooks: bool = False,
    fix_lightsail_instances: bool = False,
    caller_analysis: CallerAnalysis = CallerAnalysis.OFF,
) -> dict[str, list[dict[str, Any]]]:
    launch_watch = launch_watch_permissions(
        instance_arn=INSTANCE_ARN,
        exempt_tag_key="imdsv2-exempt",
        launch_template_arn=LAUNCH_TEMPLATE_ARN,
        image_arn=IMAGE_ARN,
        ledger_table_arn=TABLE_ARN,
        fix_launch_templates=fix_launch_templates,
        fix_images=fix_images,
        doors=DOORS,
        fix_sagemaker_notebooks=fix_sagemaker_notebooks,
        fix_lightsail_instances=fix_lightsail_instances,
    )
    usage_gate = usage_gate_permissions(
        instance_arn=INSTANCE_ARN,
        exempt_tag_key="imdsv2-exempt",
        set_account_default=set_account_default,
        rollback=rollback,
        launch_template_arn=LAUNCH_TEMPLATE_ARN,
        image_arn=IMAGE_ARN,
        fix_launch_templates=fix_launch_templates,
        fix_images=fix_images,
        doors=DOORS,
        fix_sagemaker_notebooks=fix_sagemaker_notebooks,
        fix_lightsail_instances=fix_lightsail_instances,
        caller_analysis=caller_analysis,
        analyzer_document_arn=DOCUMENT_ARN,
        ledger_table_arn=TABLE_ARN,
        pending_index_arn=f"{TABLE_ARN}/index/pending",
    )
    rejection_watch = rejection_watch_permissions(
        instance_arn=INSTANCE_ARN, exempt_tag_key="imdsv2-exempt", rollback=rollback, ledger_table_arn=TABLE_ARN
    )
    return {
        "launch_watch": [p.statement.to_statement_json() for p in launch_watch],
        "usage_gate": [p.statement.to_statement_json() for p in usage_gate],
        "rejection_watch": [p.statement.to_statement_json() for p in rejection_watch],
    }


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    return {action for statement in statements for action in as_list(statement["Action"])}


def test_without_set_account_default_nobody_may_change_the_account_default() -> None:
    for rollback in (False, True):
        statements = _statements(set_account_default=False, rollback=rollback)
        for role in statements.values():
            assert "ec2:ModifyInstanceMetadataDefaults" not in _actions(role)
        # A rollback reads it (AWS refuses optional while it enforces IMDSv2); nothing else does.
        assert ("ec2:GetInstanceMetadataDefaults" in _actions(statements["usage_gate"])) is rollback
        assert ("ec2:GetInstanceMetadataDefaults" in _actions(statements["rejection_watch"])) is rollback
        assert not _actions(statements["launch_watch"]) & METADATA_DEFAULTS


def test_with_set_account_default_the_gate_may_read_and_set_it() -> None:
    assert _actions(_statements(set_account_default=True)["usage_gate"]) >= METADATA_DEFAULTS


@pytest.mark.parametrize("opt_ins", OPT_INS)
def test_only_unscopable_actions_get_resource_star_and_no_action_is_a_wildcard(opt_ins: dict[str, bool]) -> None:
    # Each write is scoped to the one resource type it changes, in this account and region (AMIs carry no account).
    scoped = {
        "ec2:ModifyInstanceMetadataOptions": INSTANCE_ARN,
        "ec2:CreateTags": INSTANCE_ARN,
        "ec2:CreateLaunchTemplateVersion": LAUNCH_TEMPLATE_ARN,
        "ec2:ModifyLaunchTemplate": LAUNCH_TEMPLATE_ARN,
        "ec2:ModifyImageAttribute": IMAGE_ARN,
        "dynamodb:BatchGetItem": TABLE_ARN,
        "dynamodb:BatchWriteItem": TABLE_ARN,
        "sagemaker:DescribeNotebookInstance": DOORS.notebook,
        "sagemaker:ListTags": DOORS.notebook,
        "sagemaker:UpdateNotebookInstance": DOORS.notebook,
        "lightsail:GetInstance": DOORS.lightsail_instance,
        "lightsail:UpdateInstanceMetadataOptions": DOORS.lightsail_instance,
        "elasticbeanstalk:DescribeEnvironments": DOORS.beanstalk_environment,
        "elasticbeanstalk:DescribeConfigurationSettings": DOORS.beanstalk_environment,
        "eks:ListNodegroups": DOORS.eks_cluster,
        "eks:DescribeNodegroup": DOORS.eks_nodegroup,
        "ecs:DescribeCapacityProviders": DOORS.ecs_capacity_provider,
        "elasticmapreduce:DescribeCluster": DOORS.emr_cluster,
        "dynamodb:PutItem": TABLE_ARN,
        "dynamodb:Query": f"{TABLE_ARN}/index/pending",
    }
    for statements in _statements(**opt_ins).values():
        for statement in statements:
            if statement["Effect"] == "Deny":
                # The role's own limits on what it may ask (tested request by request in test_infra_role_limits)
                assert as_list(statement["Action"]) == ["ec2:ModifyInstanceMetadataOptions"]
                assert as_list(statement["Resource"]) == [INSTANCE_ARN]
                continue
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                assert "*" not in action
                if as_list(statement["Resource"]) == ["*"]:
                    assert action in UNSCOPABLE_ACTIONS
                elif action == "ssm:SendCommand":
                    # Two statements: this stack's document, and instances carrying the selection tag.
                    assert as_list(statement["Resource"]) in ([DOCUMENT_ARN], [INSTANCE_ARN])
                else:
                    assert as_list(statement["Resource"]) == [scoped[action]]


def test_both_enforcers_always_read_the_launch_sources_and_change_none_by_default() -> None:
    for role, statements in _statements().items():
        if role == "rejection_watch":
            assert not _actions(statements) & (LAUNCH_SOURCE_READS | LAUNCH_TEMPLATE_WRITES | IMAGE_WRITES)
            continue
        actions = _actions(statements)
        assert actions >= LAUNCH_SOURCE_READS, role
        assert not actions & (LAUNCH_TEMPLATE_WRITES | IMAGE_WRITES), role


def test_fix_launch_templates_grants_only_the_launch_template_writes() -> None:
    for role, statements in _statements(fix_launch_templates=True).items():
        if role == "rejection_watch":
            continue
        (writes,) = [s for s in statements if set(as_list(s["Action"])) & LAUNCH_TEMPLATE_WRITES]
        assert writes == {
            "Sid": "RequireImdsv2OnLaunchTemplates",
            "Effect": "Allow",
            "Action": sorted(LAUNCH_TEMPLATE_WRITES),
            "Resource": LAUNCH_TEMPLATE_ARN,
        }, role
        assert not _actions(statements) & IMAGE_WRITES, role


def test_fix_images_grants_only_the_image_attribute_write() -> None:
    for role, statements in _statements(fix_images=True).items():
        if role == "rejection_watch":
            continue
        assert {
            "Sid": "RequireImdsv2OnImages",
            "Effect": "Allow",
            "Action": "ec2:ModifyImageAttribute",
            "Resource": IMAGE_ARN,
        } in statements, role
        assert not _actions(statements) & LAUNCH_TEMPLATE_WRITES, role


@pytest.mark.parametrize("rollback", [False, True])
def test_tagging_is_limited_to_the_service_tags_and_the_exemption_only_with_rollback(rollback: bool) -> None:
    statements = _statements(rollback=rollback)

    def tag_keys(role: str) -> list[str]:
        found = [s for s in statements[role] if s["Action"] == "ec2:CreateTags"]
        if not found:
            return []
        (create_tags,) = found
        keys: list[str] = create_tags["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
        return keys

    exempt = ["imdsv2-exempt"] if rollback else []
    assert tag_keys("launch_watch") == ["imdsv2-enforcer:enforced-at", "imdsv2-enforcer:enforced-by"]
    assert tag_keys("usage_gate") == [
        "imdsv2-enforcer:enforced-at",
        "imdsv2-enforcer:enforced-by",
        "imdsv2-enforcer:prepared-at",
        *exempt,
    ]
    # The rejection watch changes nothing at all unless it may roll back.
    assert tag_keys("rejection_watch") == exempt
    assert ("ec2:ModifyInstanceMetadataOptions" in _actions(statements["rejection_watch"])) is rollback


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:slack-??????"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab"


def test_the_slack_notifier_reads_one_secret_and_decrypts_only_with_a_configured_key() -> None:
    without_key = [
        p.statement.to_statement_json()
        for p in slack_notifier_permissions(secret_arn=SECRET_ARN, kms_key_arn="", secret_region="x")
    ]
    with_key = [
        p.statement.to_statement_json()
        for p in slack_notifier_permissions(secret_arn=SECRET_ARN, kms_key_arn=KEY_ARN, secret_region="us-east-1")
    ]

    assert without_key == [
        {
            "Sid": "ReadSlackWebhookSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": SECRET_ARN,
        }
    ]
    assert with_key[1] == {
        "Sid": "DecryptSlackWebhookSecret",
        "Effect": "Allow",
        "Action": "kms:Decrypt",
        "Resource": KEY_ARN,
        "Condition": {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}},
    }


# Written out, not imported from domain.doors: the test states on its own what the roles must grant.
DOOR_READS = {
    "sagemaker:ListNotebookInstances",
    "sagemaker:DescribeNotebookInstance",
    "sagemaker:ListTags",
    "lightsail:GetInstances",
    "lightsail:GetInstance",
    "elasticbeanstalk:DescribeEnvironments",
    "elasticbeanstalk:DescribeConfigurationSettings",
    "batch:DescribeComputeEnvironments",
    "eks:ListClusters",
    "eks:ListNodegroups",
    "eks:DescribeNodegroup",
    "ecs:DescribeCapacityProviders",
    "elasticmapreduce:ListClusters",
    "elasticmapreduce:DescribeCluster",
    "elasticmapreduce:DescribeSecurityConfiguration",
}


SWEEPERS = ("launch_watch", "usage_gate")  # the rejection watch reads instances and their rejections only


def test_both_enforcers_read_every_door_and_change_none_by_default() -> None:
    assert not _door_writes({}, "rejection_watch")
    assert not _actions(_statements()["rejection_watch"]) & DOOR_READS
    for role in SWEEPERS:
        actions = _actions(_statements()[role])
        assert actions >= DOOR_READS, role
        assert not actions & DOOR_WRITES, role
        # Beanstalk, Batch, EKS, ECS and EMR are never changed: no write of theirs exists in any combination.
        for opt_ins in OPT_INS:
            assert all(action.split(":")[0] in {"sagemaker", "lightsail"} for action in _door_writes(opt_ins, role))


def _door_writes(opt_ins: dict[str, Any], role: str) -> set[str]:
    services = ("sagemaker:", "lightsail:", "elasticbeanstalk:", "batch:", "eks:", "ecs:", "elasticmapreduce:")
    return {action for action in _actions(_statements(**opt_ins)[role]) if action.startswith(services)} - DOOR_READS


@pytest.mark.parametrize(
    ("opt_in", "sid", "action", "resource"),
    [
        (
            "fix_sagemaker_notebooks",
            "RequireImdsv2OnSageMakerNotebooks",
            "sagemaker:UpdateNotebookInstance",
            DOORS.notebook,
        ),
        (
            "fix_lightsail_instances",
            "RequireImdsv2OnLightsailInstances",
            "lightsail:UpdateInstanceMetadataOptions",
            DOORS.lightsail_instance,
        ),
    ],
)
def test_each_door_fix_grants_its_one_write_to_both_enforcers(
    opt_in: str, sid: str, action: str, resource: str
) -> None:
    for role, statements in _statements(**{opt_in: True}).items():
        if role not in SWEEPERS:
            assert not _actions(statements) & DOOR_WRITES, role
            continue
        assert {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource} in statements, role
        assert _actions(statements) & DOOR_WRITES == {action}, role


def test_the_caller_analysis_grants_nothing_when_off_and_only_reads_in_read_mode() -> None:
    for role, statements in _statements(caller_analysis=CallerAnalysis.OFF).items():
        assert not _actions(statements) & CALLER_ANALYSIS_ACTIONS, role
    read = _statements(caller_analysis=CallerAnalysis.READ)
    assert _actions(read["usage_gate"]) & CALLER_ANALYSIS_ACTIONS == {"ssm:GetCommandInvocation"}
    assert not _actions(read["launch_watch"]) & CALLER_ANALYSIS_ACTIONS


def test_in_run_mode_send_command_reaches_only_the_stacks_document_and_selected_instances() -> None:
    statements = _statements(caller_analysis=CallerAnalysis.RUN)
    sends = [s for s in statements["usage_gate"] if s["Action"] == "ssm:SendCommand"]

    assert sends == [
        {"Sid": "SendAnalyzerDocument", "Effect": "Allow", "Action": "ssm:SendCommand", "Resource": DOCUMENT_ARN},
        {
            "Sid": "SendAnalyzerToSelectedInstances",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": INSTANCE_ARN,
            "Condition": {"StringLike": {"ssm:resourceTag/imdsv2-enforcer:caller-analysis": "*"}},
        },
    ]
    assert "ssm:DescribeInstanceInformation" in _actions(statements["usage_gate"])
    # The launch watch never analyses.
    assert not _actions(statements["launch_watch"]) & CALLER_ANALYSIS_ACTIONS


def test_in_run_mode_the_gate_may_also_write_the_two_analysis_tags() -> None:
    statements = _statements(caller_analysis=CallerAnalysis.RUN)
    (create_tags,) = [s for s in statements["usage_gate"] if s["Action"] == "ec2:CreateTags"]

    assert create_tags["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        "imdsv2-enforcer:enforced-at",
        "imdsv2-enforcer:enforced-by",
        "imdsv2-enforcer:prepared-at",
        "imdsv2-enforcer:caller-analysis",
        "imdsv2-enforcer:caller-analysis-command",
    ]


def test_the_enforcers_read_exactly_the_doors_declared_reads() -> None:
    # One declaration (domain.doors.DOOR_READ_ACTIONS) serves the enforcers' policies and the organization audit role.
    from imds_enforcer.domain.doors import DOOR_READ_ACTIONS

    for role in SWEEPERS:
        door_reads = {
            action
            for action in _actions(_statements()[role])
            if action.split(":")[0] in {"sagemaker", "lightsail", "elasticbeanstalk", "batch", "eks", "ecs"}
            or action.startswith("elasticmapreduce:")
        }
        assert door_reads == set(DOOR_READ_ACTIONS), role


def test_with_the_central_exemption_list_each_role_reads_exactly_that_parameter() -> None:
    parameter = "arn:aws:ssm:us-east-1:123456789012:parameter/platform/imds-exemptions"
    built = {
        "launch_watch": launch_watch_permissions(
            instance_arn=INSTANCE_ARN,
            exempt_tag_key="imdsv2-exempt",
            exemption_parameter_arn=parameter,
            launch_template_arn=LAUNCH_TEMPLATE_ARN,
            image_arn=IMAGE_ARN,
            ledger_table_arn=TABLE_ARN,
            fix_launch_templates=False,
            fix_images=False,
            doors=DOORS,
        ),
        "rejection_watch": rejection_watch_permissions(
            instance_arn=INSTANCE_ARN,
            exempt_tag_key="imdsv2-exempt",
            rollback=True,
            ledger_table_arn=TABLE_ARN,
            exemption_parameter_arn=parameter,
        ),
    }
    for permissions in built.values():
        statements = [p.statement.to_statement_json() for p in permissions]
        reads = [s for s in statements if "ssm:GetParameter" in as_list(s["Action"])]
        assert [(as_list(s["Action"]), s["Resource"]) for s in reads] == [(["ssm:GetParameter"], parameter)]
        # the list replaces the tag: IAM no longer keys on it
        assert not any("aws:ResourceTag/imdsv2-exempt" in str(s.get("Condition")) for s in statements)

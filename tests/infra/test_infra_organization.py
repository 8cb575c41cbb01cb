"""Organization mode, synthesized once (``org_synthesized``): the asset stacks, the StackSet and its member template,
and the security account's report topic; asserted on the templates, with cdk-nag (at synth) and cfn-lint."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match, Template

from emulator import ACCOUNT
from imds_enforcer.domain.organization import (
    AUDIT_READ_ACTIONS,
    AUDIT_ROLE_NAME,
    ORG_REPORT_KEY_ALIAS,
    ORG_REPORT_TOPIC_NAME,
)
from tests.infra.conftest import CENTRAL_ACCOUNT, ORG_ID, ORG_OUS, REGIONS, SLACK_SECRET_NAME, OrgSynthesized
from tests.infra.template_helpers import as_list, render

HOME = REGIONS[0]
ASSETS = {region: f"ImdsEnforcerOrgAssets-{region}" for region in REGIONS}
STACKSET = "ImdsEnforcerOrgStackSet"
REPORTS = "ImdsEnforcerOrgReports"
MEMBER = "ImdsEnforcerMember"
CENTRAL_TOPIC_ARN = f"arn:aws:sns:{HOME}:{CENTRAL_ACCOUNT}:{ORG_REPORT_TOPIC_NAME}"
ENFORCER_HANDLERS = (
    "imds_enforcer.handlers.launch_watch.handler",
    "imds_enforcer.handlers.usage_gate.handler",
    "imds_enforcer.handlers.rejection_watch.handler",
)


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {key: value for key, value in template["Resources"].items() if value["Type"] == resource_type}


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def _only(items: dict[str, Any]) -> Any:
    (value,) = items.values()
    return value


# ---- the app in organization mode ----------------------------------------------------------------------------


def test_organization_mode_synthesizes_the_stackset_path_instead_of_one_stack_per_region(
    org_synthesized: OrgSynthesized,
) -> None:
    # The management account gets an asset stack per region and the StackSet in the home region; the security
    # account gets the report topic. No stand-alone enforcer stack.
    assert org_synthesized.environments == {
        **{name: f"aws://{ACCOUNT}/{region}" for region, name in ASSETS.items()},
        STACKSET: f"aws://{ACCOUNT}/{HOME}",
        REPORTS: f"aws://{CENTRAL_ACCOUNT}/{HOME}",
    }
    # And every region's code is in place before the StackSet creates or updates a stack instance
    assert org_synthesized.dependencies[STACKSET] == set(ASSETS.values())


@pytest.mark.parametrize("stack", [*ASSETS.values(), STACKSET, REPORTS, MEMBER])
def test_cfn_lint_finds_no_errors(org_synthesized: OrgSynthesized, stack: str) -> None:
    import cfnlint.api

    region = next((region for region, name in ASSETS.items() if name == stack), HOME)
    # W3005: CDK's explicit DependsOn next to a GetAtt of the same role (see test_infra_stack).
    config = cfnlint.api.ManualArgs(regions=[region], ignore_checks=["W3005"])
    matches = cfnlint.api.lint_file(org_synthesized.template_path(stack), config=config)

    assert [str(match) for match in matches if not match.rule.id.startswith("I")] == []


def test_every_cdk_nag_acknowledgement_is_narrow_and_explained(org_synthesized: OrgSynthesized) -> None:
    acknowledged: dict[str, set[str]] = {}
    metadata_files = [org_synthesized.outdir / f"{name}.metadata.json" for name in (*ASSETS.values(), REPORTS)]
    metadata_files.append(org_synthesized.outdir / "stackset-member" / f"{MEMBER}.metadata.json")
    for path in metadata_files:
        for construct_path, entries in json.loads(path.read_text()).items():
            for entry in entries:
                if entry["type"] == "aws:cdk:acknowledged-rules":
                    for rule, reason in entry["data"].items():
                        assert len(reason) > 60, f"{rule} on {construct_path} needs a specific reason"
                        where = construct_path.split("/", 2)[2]
                        acknowledged.setdefault(where, set()).add(rule.split("[")[0])
    deployment = next(path for path in acknowledged if path.startswith("Custom::CDKBucketDeployment"))
    assert acknowledged == {
        # The asset bucket's access logs, and CDK's own copy handler (its managed policy, grants and runtime)
        "Assets/Bucket": {"AwsSolutions::AwsSolutions-S1"},
        deployment: {"AwsSolutions::AwsSolutions-L1"},
        deployment.replace("/Resource", "") + "/ServiceRole": {"AwsSolutions::AwsSolutions-IAM4"},
        deployment.replace("/Resource", "") + "/ServiceRole/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        # The member: the three enforcers' wildcards (now with the organization key's), the audit role's Describes,
        # the gate's sweep bucket (no access logs: it holds one object, for minutes)
        "LaunchWatch/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "UsageGate/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "RejectionWatch/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "Audit/Role": {"AwsSolutions::AwsSolutions-IAM5"},
        "LaunchWatch/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "UsageGate/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "RejectionWatch/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "UsageGate/Continuation/SweepBucket": {"AwsSolutions::AwsSolutions-S1"},
        # The central Slack notifier's
        "SlackNotifier/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
    }


# ---- the code, published once per region --------------------------------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_the_asset_bucket_is_versioned_encrypted_tls_only_and_readable_by_the_organization_only(
    org_synthesized: OrgSynthesized, region: str
) -> None:
    template = org_synthesized.template(ASSETS[region])

    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketName": f"imds-enforcer-assets-{ACCOUNT}-{region}",
            "VersioningConfiguration": {"Status": "Enabled"},
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
        },
    )
    template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"})
    statements = _statements(_only(template.find_resources("AWS::S3::BucketPolicy"))["Properties"]["PolicyDocument"])
    by_sid = {statement.get("Sid", statement["Effect"]): statement for statement in statements}
    assert by_sid["Deny"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    read = by_sid["OrganizationReadsCode"]
    assert (read["Effect"], read["Principal"], read["Action"]) == ("Allow", {"AWS": "*"}, "s3:GetObject")
    assert read["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG_ID}}
    assert render(read["Resource"]).endswith("/lambda/*")  # the code only, not the whole bucket
    assert len(statements) == 2


def test_the_code_and_layer_are_copied_under_content_keys_that_the_member_template_names(
    org_synthesized: OrgSynthesized,
) -> None:
    # Given each region's copies of the code and the layer...
    keys: dict[str, list[str]] = {}
    for region, stack in ASSETS.items():
        deployments = {
            logical_id: deployment
            for logical_id, deployment in _resources(
                org_synthesized.templates[stack], "Custom::CDKBucketDeployment"
            ).items()
            # (the home region's bucket also receives the member template: see the StackSet's test)
            if not logical_id.startswith("AssetsPublishMemberTemplate")
        }
        for deployment in deployments.values():
            properties = deployment["Properties"]
            assert properties["Extract"] is False
            assert properties["Prune"] is False
            assert properties["DestinationBucketKeyPrefix"] == "lambda/"
        keys[region] = sorted(f"lambda/{d['Properties']['SourceObjectKeys'][0]}" for d in deployments.values())
    # ...then both regions hold the same two objects (one key serves every region's members)...
    assert keys[REGIONS[0]] == keys[REGIONS[1]]
    assert len(keys[REGIONS[0]]) == 2
    # ...and they are exactly what the member's functions and layer load, from the region's own bucket
    member = org_synthesized.templates[MEMBER]
    code = [function["Properties"]["Code"] for function in _resources(member, "AWS::Lambda::Function").values()]
    layers = [layer["Properties"]["Content"] for layer in _resources(member, "AWS::Lambda::LayerVersion").values()]
    assert sorted({item["S3Key"] for item in code + layers}) == keys[REGIONS[0]]
    for item in code + layers:
        assert item["S3Bucket"] == {"Fn::Join": ["-", [{"Ref": "AssetBucketPrefix"}, {"Ref": "AWS::Region"}]]}


# ---- the StackSet ----------------------------------------------------------------------------------------------


def test_the_stackset_is_service_managed_auto_deploying_with_the_configured_rollout(
    org_synthesized: OrgSynthesized,
) -> None:
    template = org_synthesized.template(STACKSET)
    url = Capture()

    template.has_resource_properties(
        "AWS::CloudFormation::StackSet",
        {
            "StackSetName": "imds-enforcer",
            "PermissionModel": "SERVICE_MANAGED",
            "CallAs": "DELEGATED_ADMIN",
            "AutoDeployment": {"Enabled": True, "RetainStacksOnAccountRemoval": False},
            "Capabilities": ["CAPABILITY_NAMED_IAM"],
            "ManagedExecution": {"Active": True},
            "OperationPreferences": {
                "RegionConcurrencyType": "SEQUENTIAL",
                "RegionOrder": list(REGIONS),
                "MaxConcurrentPercentage": 50,
                "FailureTolerancePercentage": 20,
                "ConcurrencyMode": "SOFT_FAILURE_TOLERANCE",
            },
            "Parameters": [
                {"ParameterKey": "AssetBucketPrefix", "ParameterValue": f"imds-enforcer-assets-{ACCOUNT}"},
                {"ParameterKey": "AuditTrustedAccount", "ParameterValue": ACCOUNT},
            ],
            # One group per target, each naming its OU (or root) for the reports
            "StackInstancesGroup": [
                {
                    "DeploymentTargets": {"OrganizationalUnitIds": [target]},
                    "Regions": list(REGIONS),
                    "ParameterOverrides": [{"ParameterKey": "OrganizationalUnit", "ParameterValue": target}],
                }
                for target in ORG_OUS
            ],
            "TemplateURL": url,
        },
    )
    # The template the StackSet deploys is the member stack, whole, published by its content's hash into the home
    # region's asset bucket (a StackSet takes 51,200 bytes inline; with every opt-in on the member is larger)
    (key,) = [part for part in url.as_object()["Fn::Join"][1] if isinstance(part, str) and "/templates/" in part]
    (published,) = org_synthesized.outdir.glob(f"asset.*/{key.split('/', 1)[1]}")
    assert json.loads(published.read_text()) == org_synthesized.templates[MEMBER]
    assert "${AWS::URLSuffix}" in render(url.as_object())


def test_the_scp_guardrails_are_created_once_by_the_management_side(org_synthesized: OrgSynthesized) -> None:
    org_synthesized.template(STACKSET).has_resource_properties(
        "AWS::Organizations::Policy", {"Type": "SERVICE_CONTROL_POLICY", "TargetIds": ["r-ab12"]}
    )
    for stack in (MEMBER, REPORTS, *ASSETS.values()):
        assert _resources(org_synthesized.templates[stack], "AWS::Organizations::Policy") == {}
        assert _resources(org_synthesized.templates[stack], "AWS::IAM::ManagedPolicy") == {}


# ---- the member template ---------------------------------------------------------------------------------------


def test_the_member_template_needs_no_bootstrap_and_no_cdk_assets(org_synthesized: OrgSynthesized) -> None:
    member = org_synthesized.templates[MEMBER]

    assert "Rules" not in member  # no CheckBootstrapVersion
    assert set(member["Parameters"]) == {"AssetBucketPrefix", "AuditTrustedAccount", "OrganizationalUnit"}
    assert member["Parameters"]["OrganizationalUnit"]["Default"] == ""
    assert "cdk-hnb659fds" not in json.dumps(member)  # nothing from a CDK bootstrap bucket


def test_member_functions_report_to_the_central_topic_and_name_their_ou(org_synthesized: OrgSynthesized) -> None:
    template = org_synthesized.template(MEMBER)

    for handler in ENFORCER_HANDLERS:
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Environment": {
                    "Variables": Match.object_like(
                        {
                            "CENTRAL_REPORT_TOPIC_ARN": CENTRAL_TOPIC_ARN,
                            "ORGANIZATIONAL_UNIT": {"Ref": "OrganizationalUnit"},
                            "REPORT_TOPIC_ARN": {"Ref": Match.any_value()},  # the member's own topic still works
                            "ENFORCEMENT_MODE": "fix",
                        }
                    )
                },
            },
        )


def test_member_enforcers_may_publish_centrally_and_use_only_the_organization_key_for_it(
    org_synthesized: OrgSynthesized,
) -> None:
    member = org_synthesized.templates[MEMBER]
    functions = _resources(member, "AWS::Lambda::Function")
    roles = {function["Properties"]["Role"]["Fn::GetAtt"][0] for function in functions.values()}
    policies = [
        policy
        for policy in _resources(member, "AWS::IAM::Policy").values()
        if {role["Ref"] for role in policy["Properties"]["Roles"]} & roles
    ]
    assert len(policies) == len(ENFORCER_HANDLERS)  # the launch watch's, the gate's and the rejection watch's
    for policy in policies:
        statements = _statements(policy["Properties"]["PolicyDocument"])
        by_sid = {statement["Sid"]: statement for statement in statements if "Sid" in statement}
        assert by_sid["PublishToOrganizationTopic"]["Action"] == "sns:Publish"
        assert by_sid["PublishToOrganizationTopic"]["Resource"] == CENTRAL_TOPIC_ARN
        key = by_sid["UseOrganizationTopicKey"]
        assert sorted(as_list(key["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
        assert key["Resource"] == f"arn:aws:kms:{HOME}:{CENTRAL_ACCOUNT}:key/*"
        assert key["Condition"]["ForAnyValue:StringEquals"] == {"kms:ResourceAliases": [ORG_REPORT_KEY_ALIAS]}
        assert render(key["Condition"]["StringEquals"]["kms:ViaService"]) == f"sns.{HOME}.${{AWS::URLSuffix}}"


def test_member_audit_role_reads_exactly_what_the_audit_needs_once_per_account(
    org_synthesized: OrgSynthesized,
) -> None:
    member = org_synthesized.templates[MEMBER]
    condition = Capture()
    policy = Capture()
    template = Template.from_json(member)

    template.has_resource(
        "AWS::IAM::Role",
        {
            "Condition": condition,
            "Properties": {
                "RoleName": AUDIT_ROLE_NAME,
                "MaxSessionDuration": 3600,
                "AssumeRolePolicyDocument": {
                    "Statement": [
                        {
                            "Action": "sts:AssumeRole",
                            "Effect": "Allow",
                            "Principal": {
                                "AWS": {
                                    "Fn::Join": [
                                        "",
                                        [
                                            "arn:",
                                            {"Ref": "AWS::Partition"},
                                            ":iam::",
                                            {"Ref": "AuditTrustedAccount"},
                                            ":root",
                                        ],
                                    ]
                                }
                            },
                        }
                    ],
                    "Version": "2012-10-17",
                },
                "Policies": [{"PolicyName": "ReadImdsPosture", "PolicyDocument": policy}],
            },
        },
    )
    # Exactly the audit's reads: what IAM cannot scope on "*", each IMDS door's own reads on its resource type in
    # every region of the account (one role audits them all), and nothing that writes
    statements = policy.as_object()["Statement"]
    actions = [action for statement in statements for action in as_list(statement["Action"])]
    assert sorted(actions) == sorted(AUDIT_READ_ACTIONS)
    assert statements[0]["Resource"] == "*"
    for statement in statements[1:]:
        # arn:${AWS::Partition}:<service>:*:${AWS::AccountId}:<type>/*
        assert ":*:${AWS::AccountId}:" in render(statement["Resource"]), statement["Sid"]
    # IAM is global: the role exists in the home region's stack instance only
    assert member["Conditions"][condition.as_string()] == {"Fn::Equals": [{"Ref": "AWS::Region"}, HOME]}
    # And it is read-only: nothing that starts with a writing verb
    assert not [
        action for action in AUDIT_READ_ACTIONS if not action.split(":")[1].startswith(("Describe", "Get", "List"))
    ]


def test_the_member_leaves_subscriptions_slack_and_guardrails_to_the_central_side(
    org_synthesized: OrgSynthesized,
) -> None:
    member = org_synthesized.templates[MEMBER]

    assert _resources(member, "AWS::SNS::Subscription") == {}
    assert [
        function["Properties"]["Handler"] for function in _resources(member, "AWS::Lambda::Function").values()
    ] == list(ENFORCER_HANDLERS)
    assert _resources(member, "AWS::Chatbot::SlackChannelConfiguration") == {}
    # Its own topic is still there for the account's team
    Template.from_json(member).resource_count_is("AWS::SNS::Topic", 1)


# ---- the security account's topic ------------------------------------------------------------------------------


def test_the_central_topic_admits_the_organization_and_is_encrypted_with_a_key_it_may_use(
    org_synthesized: OrgSynthesized,
) -> None:
    template = org_synthesized.template(REPORTS)
    key = Capture()

    template.has_resource_properties(
        "AWS::SNS::Topic", {"TopicName": ORG_REPORT_TOPIC_NAME, "KmsMasterKeyId": {"Fn::GetAtt": [key, "Arn"]}}
    )
    template.has_resource_properties(
        "AWS::KMS::Alias", {"AliasName": ORG_REPORT_KEY_ALIAS, "TargetKeyId": {"Fn::GetAtt": [key.as_string(), "Arn"]}}
    )
    key_statements = _statements(
        org_synthesized.templates[REPORTS]["Resources"][key.as_string()]["Properties"]["KeyPolicy"]
    )
    (org_key,) = [statement for statement in key_statements if statement.get("Sid") == "OrganizationPublishersUseKey"]
    assert org_key["Principal"] == {"AWS": "*"}
    assert sorted(as_list(org_key["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert org_key["Condition"]["StringEquals"]["aws:PrincipalOrgID"] == ORG_ID
    assert render(org_key["Condition"]["StringEquals"]["kms:ViaService"]) == f"sns.{HOME}.${{AWS::URLSuffix}}"

    topic_statements = _statements(
        _only(template.find_resources("AWS::SNS::TopicPolicy"))["Properties"]["PolicyDocument"]
    )
    (publish,) = [statement for statement in topic_statements if statement.get("Sid") == "OrganizationPublish"]
    assert (publish["Effect"], publish["Principal"], publish["Action"]) == ("Allow", {"AWS": "*"}, "sns:Publish")
    assert publish["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG_ID}}
    # TLS only, for everyone (enforce_ssl)
    assert any(
        statement["Effect"] == "Deny" and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        for statement in topic_statements
    )


def test_e_mail_and_the_slack_notifier_live_on_the_central_topic(org_synthesized: OrgSynthesized) -> None:
    template = org_synthesized.template(REPORTS)

    template.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "secops@example.com", "FilterPolicyScope": "MessageBody"},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "imds_enforcer.handlers.slack_notify.handler",
            "Environment": {"Variables": Match.object_like({"SLACK_WEBHOOK_SECRET": SLACK_SECRET_NAME})},
        },
    )
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "lambda"})
    template.resource_count_is("AWS::Lambda::Function", 1)

"""The optional GuardrailPolicy construct, synthesized on its own (no Lambda assets, so cheap) with cdk-nag on."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks

from imds_enforcer.domain.guardrails import iam_policy_document, scp_document
from infra.constructs.guardrails import GuardrailPolicy

BREAK_GLASS = (
    "arn:aws:iam::123456789012:role/BreakGlass",
    "arn:aws:iam::*:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_BreakGlass_*",
)
TARGETS = ("ou-ab12-cdef3456", "123456789012")


def _synthesize(**props: Any) -> Template:
    """One throwaway stack holding only the construct; synth runs cdk-nag, so any finding raises here."""
    app = cdk.App()
    stack = cdk.Stack(app, "GuardrailsTest", env=cdk.Environment(account="123456789012", region="us-east-1"))
    GuardrailPolicy(stack, "Guardrails", **props)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return Template.from_json(app.synth().get_stack_by_name("GuardrailsTest").template)


@pytest.fixture(scope="module")
def iam_template() -> Template:
    return _synthesize(mode="iam", max_hop_limit=3, break_glass_role_arns=BREAK_GLASS)


@pytest.fixture(scope="module")
def scp_template() -> Template:
    return _synthesize(mode="scp", max_hop_limit=3, break_glass_role_arns=BREAK_GLASS, scp_target_ids=TARGETS)


def test_iam_mode_creates_one_managed_policy_with_the_guardrail_document(iam_template: Template) -> None:
    # Given mode="iam", then the stack holds the managed policy (and no SCP), its document exactly the pure one.
    iam_template.resource_count_is("AWS::IAM::ManagedPolicy", 1)
    iam_template.resource_count_is("AWS::Organizations::Policy", 0)
    iam_template.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {"PolicyDocument": iam_policy_document(max_hop_limit=3, exempt_principal_arns=BREAK_GLASS)},
    )


def test_iam_mode_statements_are_denies_exempting_the_service_and_break_glass(iam_template: Template) -> None:
    exemption = {
        "ArnNotLike": {"aws:PrincipalArn": ["arn:aws:iam::*:role/imds-enforcer/imds-enforcer-*", *BREAK_GLASS]}
    }
    iam_template.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "LimitImdsHopLimitOnLaunch",
                                "Effect": "Deny",
                                "Condition": {
                                    "NumericGreaterThan": {"ec2:MetadataHttpPutResponseHopLimit": "3"},
                                    **exemption,
                                },
                            }
                        ),
                        Match.object_like(
                            {
                                "Sid": "RequireImdsV2RoleCredentials",
                                "Effect": "Deny",
                                "Action": "*",
                                "Condition": {"NumericLessThan": {"ec2:RoleDelivery": "2.0"}, **exemption},
                            }
                        ),
                    ]
                )
            }
        },
    )


def test_scp_mode_creates_one_service_control_policy_on_the_targets(scp_template: Template) -> None:
    # Given mode="scp", then the stack holds the SCP (and no managed policy), its content the pure SCP document.
    scp_template.resource_count_is("AWS::Organizations::Policy", 1)
    scp_template.resource_count_is("AWS::IAM::ManagedPolicy", 0)
    scp_template.has_resource_properties(
        "AWS::Organizations::Policy",
        {
            "Type": "SERVICE_CONTROL_POLICY",
            "Name": "imds-enforcer-guardrails",
            "Content": scp_document(max_hop_limit=3, exempt_principal_arns=BREAK_GLASS),
            "TargetIds": list(TARGETS),
        },
    )


def test_a_bad_break_glass_arn_fails_when_the_construct_is_built_naming_it() -> None:
    with pytest.raises(ValueError, match=r"exempt_principal_arns.*'arn:aws:iam::123456789012:user/alice'"):
        _synthesize(mode="scp", break_glass_role_arns=["arn:aws:iam::123456789012:user/alice"])


def test_a_bad_scp_target_is_named() -> None:
    with pytest.raises(ValueError, match=r"scp_target_ids: 'ou-nope'"):
        _synthesize(mode="scp", scp_target_ids=["ou-nope"])


def test_scp_targets_in_iam_mode_are_refused_rather_than_ignored() -> None:
    with pytest.raises(ValueError, match="scp_target_ids"):
        _synthesize(mode="iam", scp_target_ids=TARGETS)

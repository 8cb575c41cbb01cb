"""The guardrails in the app: off by default, created once (first region's stack), options passed through.

The construct itself (documents, modes, cdk-nag) is tested in test_guardrails_construct.py; this is the wiring.
"""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from emulator import ACCOUNT
from imds_enforcer.domain.guardrails import iam_policy_document, scp_document
from infra import REPO_ROOT
from infra.config import DeployConfig, partition_of
from infra.stack import add_guardrails

from .conftest import BREAK_GLASS_ROLE_ARN, REGIONS

# IAM mode: exactly the service's roles of every configured region of this account (conftest's context).
SERVICE_ROLES = [
    f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-{function}-{region}"
    for region in REGIONS
    for function in ("launch-watch", "usage-gate", "rejection-watch")
]
DEPLOYMENT_ROLES = ["arn:aws:iam::*:role/stacksets-exec-*"]


def _managed_policies(synthesized: Any, region: str) -> dict[str, Any]:
    return dict(synthesized.template(region).find_resources("AWS::IAM::ManagedPolicy"))


def test_the_managed_policy_is_created_in_the_first_regions_stack_only(synthesized: Any) -> None:
    # Given guardrails=iam and two regions: policies are global, so one copy, in the first region's stack.
    assert len(_managed_policies(synthesized, REGIONS[0])) == 1
    assert _managed_policies(synthesized, REGIONS[1]) == {}
    for region in REGIONS:
        synthesized.template(region).resource_count_is("AWS::Organizations::Policy", 0)
    synthesized.template(REGIONS[0]).has_output("GuardrailsManagedPolicyArn", {"Value": {"Ref": Match.any_value()}})
    assert synthesized.template(REGIONS[1]).find_outputs("GuardrailsManagedPolicyArn") == {}


def test_the_managed_policy_carries_the_configured_deny_statements(synthesized: Any) -> None:
    (policy,) = _managed_policies(synthesized, REGIONS[0]).values()
    document = policy["Properties"]["PolicyDocument"]

    # Exactly the pure document for the context's options (hop limit 3, role delivery on, one break-glass role)...
    assert document == iam_policy_document(
        max_hop_limit=3,
        exempt_principal_arns=[BREAK_GLASS_ROLE_ARN],
        include_role_delivery=True,
        partition="aws",
        service_role_arns=SERVICE_ROLES,
        deployment_role_arns=DEPLOYMENT_ROLES,
    )
    # ...which, spot-checked, denies IMDSv1 launches/modifies, hop limits above 3 and IMDSv1 role credentials,
    # sparing the service's own roles and the break-glass role in every statement.
    statements = {statement["Sid"]: statement for statement in document["Statement"]}
    assert {statement["Effect"] for statement in statements.values()} == {"Deny"}
    assert statements["RequireImdsV2OnLaunch"]["Condition"]["StringNotEquals"]["ec2:MetadataHttpTokens"] == "required"
    assert statements["LimitImdsHopLimitOnLaunch"]["Condition"]["NumericGreaterThan"] == {
        "ec2:MetadataHttpPutResponseHopLimit": "3"
    }
    assert statements["RequireImdsV2RoleCredentials"]["Condition"]["NumericLessThan"] == {"ec2:RoleDelivery": "2.0"}
    protection = statements.pop("ProtectServiceRoles")
    assert protection["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": DEPLOYMENT_ROLES}}
    for statement in statements.values():
        assert statement["Condition"]["ArnNotLike"] == {"aws:PrincipalArn": [*SERVICE_ROLES, BREAK_GLASS_ROLE_ARN]}


def test_guardrails_are_off_by_default() -> None:
    # Given cdk.json as shipped, then no region's stack gets a guardrail, and nothing denies RoleDelivery.
    config = DeployConfig.from_context(json.loads((REPO_ROOT / "cdk.json").read_text())["context"], environ={})

    assert config.guardrails == "off"
    assert config.guardrails_region is None
    assert config.guardrail_role_delivery is False
    app = cdk.App()
    for region in ("us-east-1", "eu-west-1"):
        assert add_guardrails(cdk.Stack(app, region), config=config, region=region) is None


def test_scp_mode_creates_one_scp_in_the_first_region_with_that_partition() -> None:
    # Given an SCP in GovCloud across two regions (a cheap app: only the guardrails, no Lambda assets)...
    config = DeployConfig.from_context(
        {
            "regions": "us-gov-west-1,us-gov-east-1",
            "guardrails": "scp",
            "scp_target_ids": "ou-ab12-cdef3456,r-ab12",
            "break_glass_role_arns": "arn:aws-us-gov:iam::*:role/BreakGlass",
        },
        environ={},
    )
    app = cdk.App()
    stacks = {
        region: cdk.Stack(app, f"Guardrails-{region}", env=cdk.Environment(region=region)) for region in config.regions
    }

    # ...when each region's stack is offered the guardrails...
    built = {region: add_guardrails(stack, config=config, region=region) for region, stack in stacks.items()}

    # ...then only the first region's stack holds the SCP, its ARNs in the stack's partition, role delivery off.
    assert built["us-gov-east-1"] is None
    Template.from_stack(stacks["us-gov-east-1"]).resource_count_is("AWS::Organizations::Policy", 0)
    first = Template.from_stack(stacks["us-gov-west-1"])
    first.resource_count_is("AWS::IAM::ManagedPolicy", 0)
    first.has_resource_properties(
        "AWS::Organizations::Policy",
        {
            "Type": "SERVICE_CONTROL_POLICY",
            "TargetIds": ["ou-ab12-cdef3456", "r-ab12"],
            # Across accounts: the service's fixed-name pattern, protected by ProtectServiceRoles
            "Content": scp_document(
                max_hop_limit=2,
                exempt_principal_arns=["arn:aws-us-gov:iam::*:role/BreakGlass"],
                include_role_delivery=False,
                partition="aws-us-gov",
                deployment_role_arns=["arn:aws-us-gov:iam::*:role/stacksets-exec-*"],
            ),
        },
    )


@pytest.mark.parametrize(
    ("region", "partition"),
    [("us-east-1", "aws"), ("eu-west-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")],
)
def test_partition_of_a_region(region: str, partition: str) -> None:
    assert partition_of(region) == partition

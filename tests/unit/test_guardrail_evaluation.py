"""The guardrails evaluated request by request (tests/support/iam_eval.py, a local model of IAM's evaluation): each
statement denies one request and lets one through, and nobody becomes exempt by creating a look-alike role."""

from __future__ import annotations

from typing import Any

import pytest

from imds_enforcer.domain.guardrails import (
    DEFAULT_DEPLOYMENT_ROLE_ARNS,
    guardrail_statements,
    service_role_arns,
)
from tests.support.iam_eval import Request, UnmodelledOperatorError, evaluate, statement_applies

ACCOUNT = "123456789012"
INSTANCE = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc1234def567890"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/MemberAccountAdmin"
GATE = f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-usage-gate-us-east-1"
STACKSETS = f"arn:aws:iam::{ACCOUNT}:role/stacksets-exec-0123456789abcdef"
BREAK_GLASS = f"arn:aws:iam::{ACCOUNT}:role/BreakGlass"
# An SCP: the account's other policies (FullAWSAccess) allow; only our Denies take away.
SCP = {
    "exempt_principal_arns": [BREAK_GLASS],
    "deployment_role_arns": DEFAULT_DEPLOYMENT_ROLE_ARNS,
    "max_hop_limit": 2,
}


def scp_statements() -> list[dict[str, Any]]:
    return guardrail_statements(**SCP)  # type: ignore[arg-type]


def iam_statements() -> list[dict[str, Any]]:
    return guardrail_statements(
        exempt_principal_arns=[BREAK_GLASS],
        service_role_arns=service_role_arns(partition="aws", account=ACCOUNT, regions=["us-east-1", "eu-west-1"]),
        deployment_role_arns=DEFAULT_DEPLOYMENT_ROLE_ARNS,
    )


def run_instances(principal: str, **metadata: str) -> Request:
    return Request("ec2:RunInstances", INSTANCE, {"aws:PrincipalArn": principal, **metadata})


def modify(principal: str, *, instance_tokens: str = "optional", **request: str) -> Request:
    """A ModifyInstanceMetadataOptions: the request's values as ec2:Attribute/<Parameter>, and the instance's own
    options as its resource keys (what it has now)."""
    context = {"aws:PrincipalArn": principal, "ec2:MetadataHttpTokens": instance_tokens}
    context.update({f"ec2:Attribute/{name}": value for name, value in request.items()})
    return Request("ec2:ModifyInstanceMetadataOptions", INSTANCE, context)


# (statement, a request it denies, a request it lets through)
CASES = [
    (
        "RequireImdsV2OnLaunch",
        run_instances(ADMIN, **{"ec2:MetadataHttpTokens": "optional", "ec2:MetadataHttpEndpoint": "enabled"}),
        run_instances(ADMIN, **{"ec2:MetadataHttpTokens": "required", "ec2:MetadataHttpEndpoint": "enabled"}),
    ),
    (
        "DenyImdsV1OnModify",
        modify(ADMIN, instance_tokens="required", HttpTokens="optional"),
        # AWS's example: asking for required is fine, whatever the instance has now (it is optional here)
        modify(ADMIN, instance_tokens="optional", HttpTokens="required"),
    ),
    (
        "LimitImdsHopLimitOnLaunch",
        run_instances(ADMIN, **{"ec2:MetadataHttpTokens": "required", "ec2:MetadataHttpPutResponseHopLimit": "3"}),
        run_instances(ADMIN, **{"ec2:MetadataHttpTokens": "required", "ec2:MetadataHttpPutResponseHopLimit": "2"}),
    ),
    (
        "LimitImdsHopLimitOnModify",
        modify(ADMIN, HttpPutResponseHopLimit="5"),
        modify(ADMIN, HttpPutResponseHopLimit="2"),
    ),
    (
        "RequireImdsV2RoleCredentials",
        Request("s3:GetObject", "arn:aws:s3:::bucket/key", {"aws:PrincipalArn": ADMIN, "ec2:RoleDelivery": "1.0"}),
        Request("s3:GetObject", "arn:aws:s3:::bucket/key", {"aws:PrincipalArn": ADMIN, "ec2:RoleDelivery": "2.0"}),
    ),
    (
        "ProtectServiceRoles",
        Request(
            "iam:CreateRole",
            f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-evil",
            {"aws:PrincipalArn": ADMIN},
        ),
        Request(
            "iam:CreateRole",
            f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-usage-gate-us-east-1",
            {"aws:PrincipalArn": STACKSETS},
        ),
    ),
]


@pytest.mark.parametrize(("sid", "denied", "allowed"), CASES, ids=[case[0] for case in CASES])
def test_each_statement_denies_what_it_should_and_nothing_else(sid: str, denied: Request, allowed: Request) -> None:
    statements = scp_statements()
    (statement,) = [s for s in statements if s["Sid"] == sid]

    # Then this statement denies the one request, and no statement of the policy denies the other
    assert statement_applies(statement, denied)
    assert evaluate(statements, denied, allow_by_default=True) == "Deny"
    assert evaluate(statements, allowed, allow_by_default=True) == "Allow"


@pytest.mark.parametrize(("sid", "denied", "allowed"), CASES[:5], ids=[case[0] for case in CASES[:5]])
@pytest.mark.parametrize("principal", [GATE, BREAK_GLASS])
def test_the_service_and_break_glass_roles_are_exempt(
    sid: str, denied: Request, allowed: Request, principal: str
) -> None:
    request = Request(denied.action, denied.resource, {**denied.context, "aws:PrincipalArn": principal})
    assert evaluate(scp_statements(), request, allow_by_default=True) == "Allow"
    assert evaluate(iam_statements(), request, allow_by_default=True) == "Allow"


# Roles someone else could create: under the service's path, with its name pattern, or its name on another path.
LOOK_ALIKES = [
    f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/attacker",
    f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-usage-gate-us-east-1-copy",
    f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer-usage-gate-us-east-1",
    f"arn:aws:iam::{ACCOUNT}:role/other/imds-enforcer/imds-enforcer-usage-gate-us-east-1",
]


@pytest.mark.parametrize("principal", LOOK_ALIKES)
def test_a_look_alike_role_is_not_exempt_from_the_exact_iam_guardrails(principal: str) -> None:
    request = modify(principal, instance_tokens="required", HttpTokens="optional")
    assert evaluate(iam_statements(), request, allow_by_default=True) == "Deny"


@pytest.mark.parametrize("principal", [ADMIN, BREAK_GLASS, GATE])
@pytest.mark.parametrize(
    "request_",
    [
        Request("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/imds-enforcer-evil"),
        Request("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer/attacker"),
        Request("iam:UpdateAssumeRolePolicy", GATE),
        Request("iam:PutRolePolicy", GATE),
        Request("iam:AttachRolePolicy", GATE),
        Request("iam:PassRole", GATE),
        Request("iam:UpdateAssumeRolePolicy", STACKSETS),
        Request("lambda:UpdateFunctionCode", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:imds-enforcer-usage-gate"),
        Request(
            "lambda:UpdateFunctionConfiguration",
            f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:imds-enforcer-launch-watch",
        ),
    ],
    ids=lambda request: f"{request.action}:{request.resource.rsplit(':', 1)[-1]}",
)
def test_nobody_but_the_deployment_roles_can_make_or_change_what_the_scp_exempts(
    principal: str, request_: Request
) -> None:
    # A member account's administrator cannot create a role the SCP's pattern would exempt, change the service's
    # roles or hand them to other code, change the code its functions run, or take over the deployment roles; neither
    # can a break-glass role or the service itself. Only the deployment roles can.
    request = Request(request_.action, request_.resource, {"aws:PrincipalArn": principal})
    assert evaluate(scp_statements(), request, allow_by_default=True) == "Deny"
    deployer = Request(request_.action, request_.resource, {"aws:PrincipalArn": STACKSETS})
    assert evaluate(scp_statements(), deployer, allow_by_default=True) == "Allow"


def test_the_deny_on_the_instances_current_tokens_would_have_got_it_backwards() -> None:
    # The old statement (ec2:MetadataHttpTokens on the modify) read the instance's current state: it denied requiring
    # IMDSv2 on an optional instance and let anyone set an enforced one back to optional. The new one does neither.
    old = {
        "Effect": "Deny",
        "Action": "ec2:ModifyInstanceMetadataOptions",
        "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": {"StringNotEquals": {"ec2:MetadataHttpTokens": "required"}},
    }
    fix = modify(ADMIN, instance_tokens="optional", HttpTokens="required")
    opt_out = modify(ADMIN, instance_tokens="required", HttpTokens="optional")
    assert (evaluate([old], fix, allow_by_default=True), evaluate([old], opt_out, allow_by_default=True)) == (
        "Deny",
        "Allow",
    )
    assert (
        evaluate(scp_statements(), fix, allow_by_default=True),
        evaluate(scp_statements(), opt_out, allow_by_default=True),
    ) == ("Allow", "Deny")


@pytest.mark.parametrize("operator", ["DateGreaterThan", "IpAddress", "ForAnyValue:IpAddress", "StringEqualsIfExists"])
def test_the_model_refuses_an_operator_it_does_not_evaluate_naming_it(operator: str) -> None:
    statement = {"Effect": "Deny", "Action": "ec2:*", "Resource": "*", "Condition": {operator: {"aws:Key": "x"}}}

    with pytest.raises(UnmodelledOperatorError, match=operator):
        statement_applies(statement, Request("ec2:RunInstances", "*", {"aws:Key": "x"}))

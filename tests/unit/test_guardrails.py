"""The IAM/SCP guardrail documents: the right Deny statements, exemptions on every one, size limits, a linter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from parliament import analyze_policy_string, enhance_finding  # type: ignore[import-untyped]  # ships no types

from imds_enforcer.domain.guardrails import (
    SCP_MAX_CHARACTERS,
    GuardrailOptions,
    GuardrailsError,
    guardrail_statements,
    iam_policy_document,
    minified,
    scp_document,
)

SERVICE_ROLES = "arn:aws:iam::*:role/imds-enforcer/imds-enforcer-*"
INSTANCES = "arn:aws:ec2:*:*:instance/*"
BREAK_GLASS = "arn:aws:iam::123456789012:role/BreakGlass"
# Five realistic break-glass roles, IAM Identity Center ones with their random suffix matched by a wildcard.
FIVE_BREAK_GLASS = (
    BREAK_GLASS,
    "arn:aws:iam::*:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_BreakGlassAdministrator_*",
    "arn:aws:iam::*:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_PlatformEmergency_*",
    "arn:aws:iam::210987654321:role/platform/ImdsRolloutOperator",
    "arn:aws:iam::*:role/OrganizationAccountAccessRole",
)
SEVERITIES = ["MUTE", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


def _by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in statements}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _lint(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """parliament's findings above LOW, as (issue, severity, detail); severities come from its config."""
    policy = analyze_policy_string(json.dumps(document), include_community_auditors=True)
    findings = []
    for finding in policy.findings:
        enhance_finding(finding)
        if SEVERITIES.index(finding.severity) > SEVERITIES.index("LOW"):
            findings.append((finding.issue, finding.severity, str(finding.detail)))
    return findings


# --- the statements -------------------------------------------------------------------------------------------------


def test_launches_must_require_imdsv2_unless_imds_is_off() -> None:
    # Given the default options, when the statements are built...
    statement = _by_sid(guardrail_statements())["RequireImdsV2OnLaunch"]

    # ...then RunInstances is denied on the instance resource only (the key exists nowhere else in the call)
    # unless tokens are required or the endpoint is disabled (both keys in one operator: ANDed).
    assert statement["Effect"] == "Deny"
    assert statement["Action"] == "ec2:RunInstances"
    assert statement["Resource"] == INSTANCES
    assert statement["Condition"]["StringNotEquals"] == {
        "ec2:MetadataHttpTokens": "required",
        "ec2:MetadataHttpEndpoint": "disabled",
    }


def test_nobody_but_the_exempt_sets_an_instance_back_to_optional() -> None:
    statement = _by_sid(guardrail_statements())["DenyImdsV1OnModify"]

    # AWS's own example: the requested value (ec2:Attribute/HttpTokens), with the Null guard; ec2:MetadataHttpTokens
    # is an instance key on this action (what the instance has), so it cannot say what the call asks.
    assert statement["Action"] == "ec2:ModifyInstanceMetadataOptions"
    assert statement["Resource"] == INSTANCES
    assert statement["Condition"]["StringNotEquals"] == {"ec2:Attribute/HttpTokens": "required"}
    assert statement["Condition"]["Null"] == {"ec2:Attribute/HttpTokens": "false"}


@pytest.mark.parametrize("max_hop_limit", [1, 2, 3, 64])
def test_hop_limit_above_the_maximum_is_denied_at_launch_and_on_modify(max_hop_limit: int) -> None:
    statements = _by_sid(guardrail_statements(max_hop_limit=max_hop_limit))
    launch, modify = statements["LimitImdsHopLimitOnLaunch"], statements["LimitImdsHopLimitOnModify"]

    # At launch the instance key is the requested value; on a modify the request's own attribute is
    assert (launch["Action"], launch["Resource"]) == ("ec2:RunInstances", INSTANCES)
    assert launch["Condition"]["NumericGreaterThan"] == {"ec2:MetadataHttpPutResponseHopLimit": str(max_hop_limit)}
    assert (modify["Action"], modify["Resource"]) == ("ec2:ModifyInstanceMetadataOptions", INSTANCES)
    allowed = [str(n) for n in range(1, max_hop_limit + 1)]
    assert modify["Condition"]["StringNotEquals"] == {"ec2:Attribute/HttpPutResponseHopLimit": allowed}
    assert modify["Condition"]["Null"] == {"ec2:Attribute/HttpPutResponseHopLimit": "false"}


def test_imdsv1_role_credentials_are_denied_every_action_as_aws_documents() -> None:
    statement = _by_sid(guardrail_statements())["RequireImdsV2RoleCredentials"]

    assert statement["Effect"] == "Deny"
    assert (statement["Action"], statement["Resource"]) == ("*", "*")
    assert statement["Condition"]["NumericLessThan"] == {"ec2:RoleDelivery": "2.0"}


def test_role_delivery_can_be_left_out_until_the_fleet_is_clean() -> None:
    # Given include_role_delivery=False (an earlier step of the transition), when the statements are built...
    sids = set(_by_sid(guardrail_statements(include_role_delivery=False)))

    # ...then the launch, modify and hop-limit doors are closed, but IMDSv1 credentials still work.
    assert sids == {
        "RequireImdsV2OnLaunch",
        "DenyImdsV1OnModify",
        "LimitImdsHopLimitOnLaunch",
        "LimitImdsHopLimitOnModify",
    }


@pytest.mark.parametrize("include_role_delivery", [True, False])
def test_every_statement_is_a_deny_that_exempts_the_service_and_break_glass_roles(include_role_delivery: bool) -> None:
    # Given two break-glass roles, when the statements are built...
    statements = guardrail_statements(
        exempt_principal_arns=FIVE_BREAK_GLASS[:2], include_role_delivery=include_role_delivery
    )

    # ...then each one is a Deny that never applies to the service's own roles (the gate's rollback sets
    # `optional`) nor to the break-glass roles.
    for statement in statements:
        assert statement["Effect"] == "Deny"
        assert "Principal" not in statement
        assert statement["Condition"]["ArnNotLike"] == {"aws:PrincipalArn": [SERVICE_ROLES, *FIVE_BREAK_GLASS[:2]]}


def test_the_service_exemption_follows_the_partition() -> None:
    statements = guardrail_statements(partition="aws-us-gov")

    for statement in statements:
        assert statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [
            "arn:aws-us-gov:iam::*:role/imds-enforcer/imds-enforcer-*"
        ]
        assert statement["Resource"] in ("*", "arn:aws-us-gov:ec2:*:*:instance/*")


def test_statements_share_no_mutable_parts() -> None:
    # Given the statements, when a caller edits one exemption list...
    statements = guardrail_statements(exempt_principal_arns=[BREAK_GLASS])
    statements[0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"].append("arn:aws:iam::*:role/Extra")

    # ...then the others are unchanged.
    assert all(len(s["Condition"]["ArnNotLike"]["aws:PrincipalArn"]) == 2 for s in statements[1:])


def test_duplicate_break_glass_arns_are_listed_once() -> None:
    options = GuardrailOptions.of(exempt_principal_arns=[BREAK_GLASS, BREAK_GLASS])

    assert options.exempt_principal_arns == (BREAK_GLASS,)


# --- the documents --------------------------------------------------------------------------------------------------


def test_the_iam_document_is_a_versioned_list_of_the_statements() -> None:
    document = iam_policy_document(exempt_principal_arns=[BREAK_GLASS])

    assert document == {"Version": "2012-10-17", "Statement": guardrail_statements(exempt_principal_arns=[BREAK_GLASS])}


def test_the_scp_has_deny_statements_only_and_no_principal() -> None:
    document = scp_document(exempt_principal_arns=FIVE_BREAK_GLASS)

    assert document["Version"] == "2012-10-17"
    assert document["Statement"]
    assert all(s["Effect"] == "Deny" and "Principal" not in s for s in document["Statement"])


def test_the_scp_fits_organizations_limit_with_five_break_glass_roles() -> None:
    # Given five break-glass roles, when the SCP is built...
    document = scp_document(exempt_principal_arns=FIVE_BREAK_GLASS)

    # ...then its minified text (what Organizations counts, whitespace included) fits 5,120 characters.
    text = minified(document)
    assert len(text) <= SCP_MAX_CHARACTERS
    assert " " not in text
    assert "\n" not in text
    assert json.loads(text) == document


def test_an_scp_too_big_for_organizations_raises_a_clear_error() -> None:
    # Given more break-glass roles than fit (each is repeated in all four statements)...
    many = [f"arn:aws:iam::123456789012:role/emergency/BreakGlassOperatorNumber{n:02d}" for n in range(30)]

    # ...when the SCP is built, then it refuses, with the size, the limit and what to do about it.
    with pytest.raises(GuardrailsError, match=r"the SCP is \d+ characters minified, over .* limit of 5120") as error:
        scp_document(exempt_principal_arns=many)
    assert "exempt_principal_arns (30 given)" in str(error.value)


# --- bad options ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_hop_limit", [0, -1, 65, 100])
def test_a_hop_limit_outside_1_to_64_names_the_field(max_hop_limit: int) -> None:
    with pytest.raises(GuardrailsError, match=r"max_hop_limit"):
        guardrail_statements(max_hop_limit=max_hop_limit)


@pytest.mark.parametrize(
    "arn",
    [
        "BreakGlass",
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::12345:role/BreakGlass",
        "arn:aws:sts::123456789012:assumed-role/BreakGlass/alice",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:iam::123456789012:role/Break Glass",
    ],
)
def test_a_value_that_is_not_a_role_arn_is_named_in_the_error(arn: str) -> None:
    with pytest.raises(GuardrailsError, match="exempt_principal_arns") as error:
        scp_document(exempt_principal_arns=[BREAK_GLASS, arn])
    assert repr(arn) in str(error.value)
    # A GuardrailsError is a ValueError, so callers that only know ValueError still catch it.
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    "arn", ["arn:aws:iam::*:role/*", "arn:aws:iam::123456789012:role/*/*", "arn:aws:iam::*:role/?*"]
)
def test_a_pattern_that_exempts_every_role_is_refused(arn: str) -> None:
    with pytest.raises(GuardrailsError, match="would exempt every role"):
        iam_policy_document(exempt_principal_arns=[arn])


def test_a_single_string_is_read_as_one_arn_not_as_characters() -> None:
    assert GuardrailOptions.of(exempt_principal_arns=BREAK_GLASS).exempt_principal_arns == (BREAK_GLASS,)


def test_an_unknown_partition_names_the_field() -> None:
    with pytest.raises(GuardrailsError, match="partition"):
        guardrail_statements(partition="aws-mars")


# --- a policy linter ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [iam_policy_document, scp_document], ids=["iam", "scp"])
@pytest.mark.parametrize("include_role_delivery", [True, False])
def test_parliament_finds_nothing_above_low(build: Any, include_role_delivery: bool) -> None:
    # Given the documents with break-glass roles, when parliament (which knows all four condition keys, their types
    # and the actions they apply to) lints them with its community auditors too...
    document = build(exempt_principal_arns=FIVE_BREAK_GLASS, include_role_delivery=include_role_delivery)

    # ...then it reports nothing above LOW (in fact nothing at all, with parliament 1.6.4).
    assert _lint(document) == []


def test_parliament_would_catch_a_wrong_condition_key_or_type() -> None:
    # Given a document with a misspelt key and a String key under a Numeric operator (so the clean result above
    # means something), when parliament lints it, then it reports both.
    document = iam_policy_document()
    document["Statement"][0]["Condition"]["NumericGreaterThan"] = {"ec2:MetadataHttpTokens": "1"}
    document["Statement"][1]["Condition"]["StringEquals"] = {"ec2:MetadataHttpToken": "optional"}

    issues = {issue for issue, _, _ in _lint(document)}

    assert {"MISMATCHED_TYPE", "UNKNOWN_CONDITION_FOR_ACTION"} <= issues

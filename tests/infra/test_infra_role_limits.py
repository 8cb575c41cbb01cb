"""What each role may ask of ModifyInstanceMetadataOptions, evaluated request by request (tests/support/iam_eval.py):
the exemption holds even when the tag appears after a run read the instance, the launch watch can only require
IMDSv2, and the gate's prepare and rollback still work."""

from __future__ import annotations

from typing import Any

import pytest

from infra.constructs.permissions import launch_watch_permissions, rejection_watch_permissions, usage_gate_permissions
from tests.infra.conftest import Synthesized
from tests.infra.template_helpers import DOORS
from tests.support.iam_eval import Request, evaluate, resolve

ACCOUNT = "123456789012"
INSTANCE_ARN = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*"
INSTANCE = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc1234def567890"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/imds-enforcer-state"
EXEMPT = "imdsv2-exempt"


def statements(function: str, *, rollback: bool) -> list[dict[str, Any]]:
    common = {
        "launch_template_arn": "lt",
        "image_arn": "ami",
        "fix_launch_templates": False,
        "fix_images": False,
        "doors": DOORS,
    }
    if function == "launch_watch":
        built = launch_watch_permissions(
            instance_arn=INSTANCE_ARN, exempt_tag_key=EXEMPT, ledger_table_arn=TABLE_ARN, **common
        )
    elif function == "usage_gate":
        built = usage_gate_permissions(
            instance_arn=INSTANCE_ARN,
            exempt_tag_key=EXEMPT,
            set_account_default=False,
            rollback=rollback,
            ledger_table_arn=TABLE_ARN,
            pending_index_arn=f"{TABLE_ARN}/index/pending",
            **common,
        )
    else:
        built = rejection_watch_permissions(
            instance_arn=INSTANCE_ARN, exempt_tag_key=EXEMPT, rollback=rollback, ledger_table_arn=TABLE_ARN
        )
    return [permission.statement.to_statement_json() for permission in built]


def modify(*, exempt: bool = False, **request: str) -> Request:
    """ModifyInstanceMetadataOptions with these parameters, on an instance with (or without) the exemption tag."""
    context: dict[str, str] = {f"ec2:Attribute/{name}": value for name, value in request.items()}
    if exempt:
        context[f"aws:ResourceTag/{EXEMPT}"] = "vendor appliance"
    context["aws:ResourceTag/team"] = "web"
    return Request("ec2:ModifyInstanceMetadataOptions", INSTANCE, context)


ENFORCE = {"HttpTokens": "required"}
ENFORCE_CONTAINER_HOST = {"HttpTokens": "required", "HttpPutResponseHopLimit": "2"}
PREPARE = {"HttpPutResponseHopLimit": "2"}
ROLL_BACK = {"HttpTokens": "optional"}
DISABLE_IMDS = {"HttpEndpoint": "disabled"}

# (function, rollback on, request, exempt-tagged instance, expected)
MATRIX = [
    # The launch watch only ever requires IMDSv2, never on an exempt instance, and can do nothing else.
    ("launch_watch", False, ENFORCE, False, "Allow"),
    ("launch_watch", False, ENFORCE_CONTAINER_HOST, False, "Allow"),
    ("launch_watch", False, ENFORCE, True, "Deny"),
    ("launch_watch", False, ROLL_BACK, False, "Deny"),
    ("launch_watch", False, PREPARE, False, "Deny"),
    ("launch_watch", False, DISABLE_IMDS, False, "Deny"),
    # The gate enforces and prepares, never on an exempt instance; without rollback it never sets optional.
    ("usage_gate", False, ENFORCE, False, "Allow"),
    ("usage_gate", False, PREPARE, False, "Allow"),
    ("usage_gate", False, ENFORCE, True, "Deny"),
    ("usage_gate", False, PREPARE, True, "Deny"),
    ("usage_gate", False, ROLL_BACK, False, "Deny"),
    # With rollback, the gate may set optional, on the instance it has just tagged exempt too.
    ("usage_gate", True, ROLL_BACK, True, "Allow"),
    ("usage_gate", True, ROLL_BACK, False, "Allow"),
    ("usage_gate", True, ENFORCE, True, "Deny"),
    ("usage_gate", True, PREPARE, True, "Deny"),
    ("usage_gate", True, ENFORCE, False, "Allow"),
    # The rejection watch may only roll back (and only with rollback on).
    ("rejection_watch", True, ROLL_BACK, True, "Allow"),
    ("rejection_watch", True, ENFORCE, False, "Deny"),
    ("rejection_watch", True, PREPARE, False, "Deny"),
    ("rejection_watch", False, ROLL_BACK, False, "ImplicitDeny"),
]


@pytest.mark.parametrize(("function", "rollback", "request_", "exempt", "expected"), MATRIX)
def test_each_role_may_ask_only_what_its_work_needs(
    function: str, rollback: bool, request_: dict[str, str], exempt: bool, expected: str
) -> None:
    assert evaluate(statements(function, rollback=rollback), modify(exempt=exempt, **request_)) == expected


def test_the_deployed_roles_carry_the_same_limits(synthesized: Synthesized) -> None:
    # The synthesized stack (rollback on, exemption tag imdsv2-exempt), each role's policy resolved as IAM reads it
    template = synthesized.templates["ImdsEnforcer-us-east-1"]
    roles = {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        and str(resource["Properties"].get("RoleName", "")).startswith("imds-enforcer-")
    }
    policies: dict[str, list[dict[str, Any]]] = {}
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        for role in resource["Properties"]["Roles"]:
            if role["Ref"] not in roles:
                continue  # a role of the stack's plumbing (the continuation's scheduler role), not a function's
            name = roles[role["Ref"]]["Properties"]["RoleName"]
            policies.setdefault(name, []).extend(resolve(resource["Properties"]["PolicyDocument"]["Statement"]))

    launch_watch = policies["imds-enforcer-launch-watch-us-east-1"]
    gate = policies["imds-enforcer-usage-gate-us-east-1"]
    rejection_watch = policies["imds-enforcer-rejection-watch-us-east-1"]
    assert evaluate(launch_watch, modify(**ENFORCE)) == "Allow"
    assert evaluate(launch_watch, modify(exempt=True, **ENFORCE)) == "Deny"
    assert evaluate(launch_watch, modify(**ROLL_BACK)) == "Deny"
    assert evaluate(gate, modify(**PREPARE)) == "Allow"
    assert evaluate(gate, modify(exempt=True, **PREPARE)) == "Deny"
    assert evaluate(gate, modify(exempt=True, **ROLL_BACK)) == "Allow"
    assert evaluate(rejection_watch, modify(exempt=True, **ROLL_BACK)) == "Allow"
    assert evaluate(rejection_watch, modify(**ENFORCE)) == "Deny"
    # The Slack notifier's role touches no instance at all
    assert evaluate(policies["imds-enforcer-slack-notifier-us-east-1"], modify(**ENFORCE)) == "ImplicitDeny"

"""The usage gate's continuation in the template: the sweep bucket, the schedule group, the scheduler role, and the
least privilege around them (the gate may only write its own sweep object, create schedules in its own group and
hand them the scheduler role; the scheduler role may only start the gate)."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Capture, Match, Template

from emulator import ACCOUNT
from infra.constructs.permissions import gate_continuation_permissions
from tests.infra.template_helpers import as_list, render

GATE = "imds_enforcer.handlers.usage_gate.handler"
CONTINUATION_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:ListBucket",
    "scheduler:CreateSchedule",
    "iam:PassRole",
}


def _one(template: Template, resource_type: str, props: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    found = template.find_resources(resource_type, {"Properties": props} if props else None)
    assert len(found) == 1, sorted(found)
    ((logical_id, resource),) = found.items()
    return logical_id, resource


def _role_statements(template: Template, role_id: str) -> list[dict[str, Any]]:
    policies = template.find_resources(
        "AWS::IAM::Policy", {"Properties": {"Roles": Match.array_with([{"Ref": role_id}])}}
    )
    return [
        statement for policy in policies.values() for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _function_role(template: Template, handler: str) -> str:
    _, function = _one(template, "AWS::Lambda::Function", {"Handler": handler})
    return str(function["Properties"]["Role"]["Fn::GetAtt"][0])


def test_sweep_bucket_is_encrypted_private_tls_only_and_expires_what_a_broken_sweep_leaves(template: Template) -> None:
    bucket_id, bucket = _one(template, "AWS::S3::Bucket")
    props = bucket["Properties"]
    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    }
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert "VersioningConfiguration" not in props
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == 3
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                "Principal": {"AWS": "*"},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_scheduler_role_only_starts_the_gate_and_only_for_this_accounts_schedules(template: Template) -> None:
    role_id, role = _one(
        template,
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [Match.object_like({"Principal": {"Service": "scheduler.amazonaws.com"}})]
            }
        },
    )
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    # Confused deputy: only schedules of the stack's own account may make EventBridge Scheduler assume it
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    gate_id, _ = _one(template, "AWS::Lambda::Function", {"Handler": GATE})
    dead_letters = [queue for queue in template.find_resources("AWS::SQS::Queue") if queue.startswith("UsageGate")]
    assert len(dead_letters) == 1
    statements = _role_statements(template, role_id)
    assert sorted((s["Action"], s["Resource"]["Fn::GetAtt"][0]) for s in statements) == [
        ("lambda:InvokeFunction", gate_id),
        ("sqs:SendMessage", dead_letters[0]),
    ]
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in statements)


def test_gate_may_touch_only_its_sweep_object_its_schedules_and_pass_only_the_scheduler_role(
    template: Template,
) -> None:
    bucket_id, _ = _one(template, "AWS::S3::Bucket")
    _, group = _one(template, "AWS::Scheduler::ScheduleGroup")
    scheduler_role_id, _ = _one(
        template,
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [Match.object_like({"Principal": {"Service": "scheduler.amazonaws.com"}})]
            }
        },
    )
    statements = {
        s["Sid"]: s
        for s in _role_statements(template, _function_role(template, GATE))
        if set(as_list(s["Action"])) & CONTINUATION_ACTIONS
    }
    assert set(statements) == {"SweepStateObject", "SweepBucketListing", "ScheduleContinuations", "PassSchedulerRole"}

    objects = statements["SweepStateObject"]
    assert sorted(as_list(objects["Action"])) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert render(objects["Resource"]).replace(json_getatt(bucket_id), "<bucket>") == "<bucket>/sweeps/*"
    assert statements["SweepBucketListing"]["Resource"] == {"Fn::GetAtt": [bucket_id, "Arn"]}

    schedules = statements["ScheduleContinuations"]
    assert schedules["Action"] == "scheduler:CreateSchedule"
    assert render(schedules["Resource"]).endswith(f":schedule/{group['Properties']['Name']}/*")
    assert render(schedules["Resource"]).startswith("arn:${AWS::Partition}:scheduler:")

    passing = statements["PassSchedulerRole"]
    assert passing["Action"] == "iam:PassRole"
    assert passing["Resource"] == {"Fn::GetAtt": [scheduler_role_id, "Arn"]}
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}


def json_getatt(logical_id: str) -> str:
    return render({"Fn::GetAtt": [logical_id, "Arn"]})


def test_no_other_function_may_touch_the_continuation(template: Template) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    for function in functions.values():
        handler = function["Properties"]["Handler"]
        if handler == GATE:
            continue
        role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
        actions = {action for s in _role_statements(template, role_id) for action in as_list(s["Action"])}
        assert not actions & CONTINUATION_ACTIONS, handler


def test_the_gate_keeps_one_run_at_a_time(template: Template) -> None:
    reserved = Capture()
    template.has_resource_properties(
        "AWS::Lambda::Function", {"Handler": GATE, "ReservedConcurrentExecutions": reserved}
    )
    assert reserved.as_number() == 1


def test_continuation_permission_builder_names_every_action_and_explains_each_wildcard() -> None:
    permissions = gate_continuation_permissions(
        bucket_arn="arn:aws:s3:::sweeps",
        state_prefix="sweeps/",
        schedule_arns="arn:aws:scheduler:us-east-1:123456789012:schedule/group/*",
        scheduler_role_arn="arn:aws:iam::123456789012:role/scheduler",
    )
    for permission in permissions:
        statement = permission.statement.to_statement_json()
        assert all("*" not in action for action in as_list(statement["Action"]))
        wildcard = any("*" in resource for resource in as_list(statement["Resource"]))
        assert bool(permission.wildcard_reason) == wildcard, statement["Sid"]

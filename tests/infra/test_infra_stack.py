"""The synthesized stacks: what deploys, asserted on the templates (never on hashed logical ids)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match, Matcher, Template

from emulator import ACCOUNT
from imds_enforcer.domain.callers import CALLER_ANALYSIS_TAG_KEYS
from imds_enforcer.domain.settings import CallerAnalysis, EnforcementMode, Settings
from infra.config import PLACEHOLDER_TOPIC_ARN, PLACEHOLDERS
from tests.infra.template_helpers import LAUNCH_SOURCE_READS, as_list, render

REGIONS = ("us-east-1", "eu-west-1")
HANDLERS = {
    "launch_watch": "imds_enforcer.handlers.launch_watch.handler",
    "usage_gate": "imds_enforcer.handlers.usage_gate.handler",
}
# Woken by the rejection alarm: reports (and, opt-in, rolls back) instances rejecting IMDSv1; sweeps nothing.
REJECTION_WATCH_HANDLER = "imds_enforcer.handlers.rejection_watch.handler"
# The Slack notifier is deployed too (conftest configures its secret); it neither reports nor touches instances.
SLACK_HANDLER = "imds_enforcer.handlers.slack_notify.handler"
ALL_HANDLERS = [*HANDLERS.values(), REJECTION_WATCH_HANDLER, SLACK_HANDLER]
SERVICE_TAGS = ["imdsv2-enforcer:enforced-at", "imdsv2-enforcer:enforced-by"]


# ---- helpers -------------------------------------------------------------------------------------------------


def _identity_policies(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every identity policy document: AWS::IAM::Policy and ::ManagedPolicy resources, and roles' inline policies."""
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, resource["Properties"]["PolicyDocument"]
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                yield logical_id, policy["PolicyDocument"]


def _function(template: Template, handler: str) -> dict[str, Any]:
    (function,) = template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": handler}}).values()
    return dict(function)


def _role_policy_statements(template: Template, handler: str) -> list[dict[str, Any]]:
    """The statements attached to the role of the function with this handler."""
    role_id = _function(template, handler)["Properties"]["Role"]["Fn::GetAtt"][0]
    policies = template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role_id}]}})
    return [
        statement for policy in policies.values() for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _only_resource(template: Template, resource_type: str) -> dict[str, Any]:
    (resource,) = template.find_resources(resource_type).values()
    return dict(resource)


def _only_logical_id(template: Template, resource_type: str, containing: str = "") -> str:
    """The one resource of that type (whose logical id contains `containing`, when given)."""
    (logical_id,) = (found for found in template.find_resources(resource_type) if containing in found)
    return logical_id


# ---- the app -------------------------------------------------------------------------------------------------


def test_one_stack_per_region_in_the_configured_account(synthesized: Any) -> None:
    assert synthesized.environments == {f"ImdsEnforcer-{region}": f"aws://{ACCOUNT}/{region}" for region in REGIONS}


def test_cdk_nag_found_nothing_unacknowledged(synthesized: Any) -> None:
    # Synth raises ValidationFailed on any unacknowledged finding; the report, if written, must be clean too.
    report_file = synthesized.outdir / "validation-report.json"
    if report_file.exists():
        report = json.loads(report_file.read_text())
        assert [r for r in report["pluginReports"] if r.get("violations")] == []


def test_every_cdk_nag_acknowledgement_is_narrow_and_explained(synthesized: Any) -> None:
    # Given the cloud assembly's metadata, when we collect the acknowledgements...
    acknowledged: dict[str, set[str]] = {}
    for region in REGIONS:
        metadata = json.loads((synthesized.outdir / f"ImdsEnforcer-{region}.metadata.json").read_text())
        for path, entries in metadata.items():
            for entry in entries:
                if entry["type"] == "aws:cdk:acknowledged-rules":
                    for rule, reason in entry["data"].items():
                        assert len(reason) > 60, f"{rule} on {path} needs a specific reason"
                        acknowledged.setdefault(path.split("/", 2)[2], set()).add(rule.split("[")[0])
    # ...then only the three enforcers' wildcard resources and the DLQs' "no DLQ" are acknowledged, nothing stack-wide
    # (the Slack notifier's secret grant needs none: '-??????' matches one secret's random suffix, not a wildcard).
    assert acknowledged == {
        "LaunchWatch/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "UsageGate/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "RejectionWatch/Enforcer/Role/DefaultPolicy": {"AwsSolutions::AwsSolutions-IAM5"},
        "LaunchWatch/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "UsageGate/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "RejectionWatch/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        "SlackNotifier/Enforcer/DeadLetterQueue": {"AwsSolutions::AwsSolutions-SQS3"},
        # The gate's sweep bucket holds one transient object: no server access log bucket to outlive it.
        "UsageGate/Continuation/SweepBucket": {"AwsSolutions::AwsSolutions-S1"},
    }


@pytest.mark.parametrize("region", REGIONS)
def test_cfn_lint_finds_no_errors(synthesized: Any, region: str) -> None:
    import cfnlint.api

    config = cfnlint.api.ManualArgs(
        regions=[region],
        # W3005: CDK renders an explicit DependsOn on the function's role next to the Fn::GetAtt of its ARN.
        # Redundant but harmless, and not ours to remove without overriding CDK's dependency graph.
        ignore_checks=["W3005"],
    )
    matches = cfnlint.api.lint_file(synthesized.template_path(f"ImdsEnforcer-{region}"), config=config)

    problems = [str(match) for match in matches if not match.rule.id.startswith("I")]
    assert problems == []


def test_outputs(template: Template) -> None:
    for name in (
        "ReportTopicArn",
        "LaunchWatchFunctionName",
        "UsageGateFunctionName",
        "LaunchWatchDeadLetterQueueUrl",
        "UsageGateDeadLetterQueueUrl",
        "SlackNotifierFunctionName",
        "SlackNotifierDeadLetterQueueUrl",
        "SlackChannelConfigurationArn",
        "DashboardUrl",
    ):
        template.has_output(name, {"Value": Match.any_value()})


# ---- report topic --------------------------------------------------------------------------------------------


def test_report_topic_is_encrypted_with_a_rotated_key(template: Template) -> None:
    key_id = _only_logical_id(template, "AWS::KMS::Key")

    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [key_id, "Arn"]}})


def test_report_topic_refuses_publishing_without_tls(template: Template) -> None:
    topic_id = _only_logical_id(template, "AWS::SNS::Topic")

    template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "Topics": [{"Ref": topic_id}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "sns:Publish",
                                "Principal": "*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_report_topic_mails_the_configured_address(template: Template) -> None:
    template.resource_count_is("AWS::SNS::Subscription", 2)  # the address and the Slack notifier
    template.has_resource_properties(
        "AWS::SNS::Subscription",
        {
            "Protocol": "email",
            "Endpoint": "secops@example.com",
            "TopicArn": {"Ref": _only_logical_id(template, "AWS::SNS::Topic")},
        },
    )


# ---- functions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "memory", "timeout", "concurrency"),
    # The gate never runs two sweeps at once; the launch watch reserves nothing (new accounts have a quota of 10).
    [("launch_watch", 256, 60, Match.absent()), ("usage_gate", 1024, 600, 1)],
)
def test_functions_run_python_3_14_on_arm_with_the_layer(
    template: Template, name: str, memory: int, timeout: int, concurrency: object
) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": HANDLERS[name],
            "Runtime": "python3.14",
            "Architectures": ["arm64"],
            "MemorySize": memory,
            "Timeout": timeout,
            "ReservedConcurrentExecutions": concurrency,
            "Layers": [{"Ref": _only_logical_id(template, "AWS::Lambda::LayerVersion")}],
            "LoggingConfig": {"LogGroup": {"Ref": Match.any_value()}},
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::LayerVersion", {"CompatibleArchitectures": ["arm64"], "CompatibleRuntimes": ["python3.14"]}
    )


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("handler", [*HANDLERS.values(), REJECTION_WATCH_HANDLER])
def test_function_environment_parses_with_the_runtime_settings(synthesized: Any, region: str, handler: str) -> None:
    # Given the environment a function deploys with...
    template = synthesized.template(region)
    env = dict(_function(template, handler)["Properties"]["Environment"]["Variables"])
    topic_id = _only_logical_id(template, "AWS::SNS::Topic")
    table_id = _only_logical_id(template, "AWS::DynamoDB::GlobalTable")
    assert env.pop("REPORT_TOPIC_ARN") == {"Ref": topic_id}
    assert env.pop("LEDGER_TABLE_NAME") == {"Ref": table_id}
    # (the gate alone knows where its continuation lives: the stack's sweep bucket, schedule group, scheduler role,
    # and its own dead-letter queue)
    continuation = {name: env.pop(name) for name in sorted(Settings.GATE_ONLY) if name in env}
    if handler == HANDLERS["usage_gate"]:
        assert continuation == {
            "CONTINUATION_DEAD_LETTER_ARN": {
                "Fn::GetAtt": [_only_logical_id(template, "AWS::SQS::Queue", "UsageGate"), "Arn"]
            },
            "CONTINUATION_ROLE_ARN": {"Fn::GetAtt": [_only_logical_id(template, "AWS::IAM::Role", "Scheduler"), "Arn"]},
            # (a name the L2 construct generates at synth)
            "CONTINUATION_SCHEDULE_GROUP": _only_resource(template, "AWS::Scheduler::ScheduleGroup")["Properties"][
                "Name"
            ],
            "SWEEP_STATE_BUCKET": {"Ref": _only_logical_id(template, "AWS::S3::Bucket")},
        }
    else:
        assert continuation == {}

    # ...when the handler reads it (the topic and table are only known at deploy time)...
    placeholders = {"REPORT_TOPIC_ARN": PLACEHOLDER_TOPIC_ARN, "LEDGER_TABLE_NAME": PLACEHOLDERS["LEDGER_TABLE_NAME"]}
    settings = Settings.from_env({**env, **placeholders})

    # ...then it holds what the context said.
    assert settings == Settings(
        ENFORCEMENT_MODE=EnforcementMode.FIX,
        REPORT_TOPIC_ARN=PLACEHOLDER_TOPIC_ARN,
        LEDGER_TABLE_NAME=PLACEHOLDERS["LEDGER_TABLE_NAME"],
        LOOKBACK_DAYS=21,
        EXEMPT_TAG_KEY="imdsv2-exempt",
        ROLLBACK_ON_REJECTED=True,
        CONTAINER_HOST_TAG_KEYS=("team:k8s-node", "platform:ecs"),
        SET_ACCOUNT_DEFAULT=True,
        FIX_LAUNCH_TEMPLATES=True,
        FIX_IMAGES=True,
        FIX_SAGEMAKER_NOTEBOOKS=True,
        FIX_LIGHTSAIL_INSTANCES=True,
        CALLER_ANALYSIS=CallerAnalysis.RUN,
        CALLER_ANALYSIS_MAX_INSTANCES=3,
        CALLER_ANALYSIS_MINUTES=15,
        # The stack's own analyzer document, one per regional stack.
        CALLER_ANALYSIS_DOCUMENT=f"ImdsEnforcer-{region}-ImdsPacketAnalyzer",
        MAX_CONTINUATIONS=12,
    )
    assert env["POWERTOOLS_SERVICE_NAME"] == "imds-enforcer"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "ImdsEnforcer"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert (
        synthesized.config.lambda_settings(
            PLACEHOLDER_TOPIC_ARN,
            ledger_table_name=PLACEHOLDERS["LEDGER_TABLE_NAME"],
            analyzer_document=f"ImdsEnforcer-{region}-ImdsPacketAnalyzer",
        )
        == settings
    )


def test_each_function_logs_to_its_own_group_with_retention(template: Template) -> None:
    groups = template.find_resources("AWS::Logs::LogGroup")
    assert len(groups) == len(ALL_HANDLERS)
    assert all(group["Properties"]["RetentionInDays"] == 30 for group in groups.values())
    for handler in ALL_HANDLERS:
        group_id = _function(template, handler)["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert group_id in groups
        writes = [s for s in _role_policy_statements(template, handler) if "logs:PutLogEvents" in as_list(s["Action"])]
        assert [s["Resource"] for s in writes] == [{"Fn::GetAtt": [group_id, "Arn"]}]


def test_failed_async_invocations_go_to_an_encrypted_tls_only_queue(template: Template) -> None:
    queue = Capture()
    template.resource_count_is("AWS::Lambda::EventInvokeConfig", len(ALL_HANDLERS))
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "MaximumRetryAttempts": 2,
            "Qualifier": "$LATEST",
            "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}},
        },
    )
    queues = template.find_resources("AWS::SQS::Queue")
    assert queue.as_string() in queues
    dead_letters = {queue_id: q for queue_id, q in queues.items() if "DeadLetterQueue" in queue_id}
    assert len(dead_letters) == len(ALL_HANDLERS)
    for properties in (q["Properties"] for q in dead_letters.values()):
        assert properties == {"MessageRetentionPeriod": 14 * 24 * 3600, "SqsManagedSseEnabled": True}
    template.resource_properties_count_is(
        "AWS::SQS::QueuePolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            }
        },
        len(ALL_HANDLERS) + 1,  # and the launch watch's event queue
    )


# ---- triggers ------------------------------------------------------------------------------------------------


def _rule_targets(template: Template, handler: str) -> Matcher:
    function_id = next(
        logical_id
        for logical_id, resource in template.find_resources("AWS::Lambda::Function").items()
        if resource["Properties"]["Handler"] == handler
    )
    return Match.exact(
        [
            {
                "Arn": {"Fn::GetAtt": [function_id, "Arn"]},
                "Id": Match.any_value(),
                "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.string_like_regexp("DeadLetterQueue"), "Arn"]}},
                "RetryPolicy": {"MaximumRetryAttempts": Match.any_value(), "MaximumEventAgeInSeconds": 3600},
            }
        ]
    )


def _launch_watch_queue_targets(template: Template) -> Matcher:
    (queue_id,) = [
        queue_id for queue_id in template.find_resources("AWS::SQS::Queue") if "LaunchWatchEvents" in queue_id
    ]
    return Match.exact(
        [
            {
                "Arn": {"Fn::GetAtt": [queue_id, "Arn"]},
                "Id": Match.any_value(),
                "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.string_like_regexp("DeadLetterQueue"), "Arn"]}},
                "RetryPolicy": {"MaximumRetryAttempts": Match.any_value(), "MaximumEventAgeInSeconds": 3600},
            }
        ]
    )


def test_launch_events_wait_in_a_queue_so_a_burst_is_one_invocation(template: Template) -> None:
    # An encrypted, TLS-only queue that hands on to the dead-letter queue after the first try and two retries...
    (queue_id,) = [
        queue_id for queue_id in template.find_resources("AWS::SQS::Queue") if "LaunchWatchEvents" in queue_id
    ]
    template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "SqsManagedSseEnabled": True,
            "VisibilityTimeout": 360,
            "MessageRetentionPeriod": 3600,
            "RedrivePolicy": {
                "deadLetterTargetArn": {
                    "Fn::GetAtt": [Match.string_like_regexp("LaunchWatchEnforcerDeadLetter"), "Arn"]
                },
                "maxReceiveCount": 3,
            },
        },
    )
    # ...read by the launch watch in batches of up to 100 events gathered for up to 30 seconds, failures reported
    function_id = next(
        logical_id
        for logical_id, resource in template.find_resources("AWS::Lambda::Function").items()
        if resource["Properties"]["Handler"] == HANDLERS["launch_watch"]
    )
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [queue_id, "Arn"]},
            "FunctionName": {"Ref": function_id},
            "BatchSize": 100,
            "MaximumBatchingWindowInSeconds": 30,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
    )
    # ...and only the launch watch's rules may send to it
    template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": Match.array_with(["sqs:SendMessage"]),
                                "Principal": {"Service": "events.amazonaws.com"},
                                "Condition": {"ArnEquals": {"aws:SourceArn": Match.any_value()}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_launch_watch_rules_match_exactly_the_launch_events(template: Template) -> None:
    # The launch watch's four rules, the gate's schedule and the rejection alarm's rule.
    template.resource_count_is("AWS::Events::Rule", 6)
    targets = _launch_watch_queue_targets(template)
    # EC2's calls: launches, metadata option changes, and the launch sources (launch templates, registered AMIs).
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.exact(
                {
                    "source": ["aws.ec2"],
                    "detail-type": ["AWS API Call via CloudTrail"],
                    "detail": {
                        "eventSource": ["ec2.amazonaws.com"],
                        "eventName": [
                            "RunInstances",
                            "ModifyInstanceMetadataOptions",
                            "CreateLaunchTemplate",
                            "CreateLaunchTemplateVersion",
                            "ModifyLaunchTemplate",
                            "RegisterImage",
                        ],
                    },
                }
            ),
            "State": "ENABLED",
            "Targets": targets,
        },
    )
    # Auto Scaling's launch configurations: another source, so a rule of their own with the same target settings.
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.exact(
                {
                    "source": ["aws.autoscaling"],
                    "detail-type": ["AWS API Call via CloudTrail"],
                    "detail": {
                        "eventSource": ["autoscaling.amazonaws.com"],
                        "eventName": ["CreateLaunchConfiguration"],
                    },
                }
            ),
            "State": "ENABLED",
            "Targets": targets,
        },
    )
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.exact(
                {
                    "source": ["aws.ec2"],
                    "detail-type": ["EC2 Instance State-change Notification"],
                    "detail": {"state": ["pending", "running"]},
                }
            ),
            "State": "ENABLED",
            "Targets": targets,
        },
    )
    # The IMDS doors outside EC2 instances: each service's create calls and IMDS changes, in one rule.
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.exact(
                {
                    "source": [
                        "aws.batch",
                        "aws.ecs",
                        "aws.eks",
                        "aws.elasticbeanstalk",
                        "aws.emr",
                        "aws.lightsail",
                        "aws.sagemaker",
                    ],
                    "detail-type": ["AWS API Call via CloudTrail"],
                    "detail": {
                        "eventSource": [
                            "batch.amazonaws.com",
                            "ecs.amazonaws.com",
                            "eks.amazonaws.com",
                            "elasticbeanstalk.amazonaws.com",
                            "elasticmapreduce.amazonaws.com",
                            "lightsail.amazonaws.com",
                            "sagemaker.amazonaws.com",
                        ],
                        "eventName": [
                            "CreateCapacityProvider",
                            "CreateComputeEnvironment",
                            "CreateEnvironment",
                            "CreateInstances",
                            "CreateInstancesFromSnapshot",
                            "CreateNodegroup",
                            "CreateNotebookInstance",
                            "RunJobFlow",
                            "UpdateCapacityProvider",
                            "UpdateComputeEnvironment",
                            "UpdateEnvironment",
                            "UpdateInstanceMetadataOptions",
                            "UpdateNodegroupVersion",
                            "UpdateNotebookInstance",
                        ],
                    },
                }
            ),
            "State": "ENABLED",
            "Targets": targets,
        },
    )
    # Every launch watch rule retries a failed delivery to the queue 4 times before the dead-letter queue.
    launch_rules = template.find_resources("AWS::Events::Rule", {"Properties": {"Targets": targets}})
    assert len(launch_rules) == 4
    assert {r["Properties"]["Targets"][0]["RetryPolicy"]["MaximumRetryAttempts"] for r in launch_rules.values()} == {4}


def test_usage_gate_runs_on_the_configured_schedule(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(4 hours)",
            "State": "ENABLED",
            "Targets": _rule_targets(template, HANDLERS["usage_gate"]),
        },
    )


def test_the_rejection_alarm_reads_every_instance_at_five_minutes_and_wakes_the_rejection_watch(
    template: Template,
) -> None:
    # One alarm over EC2's MetadataNoTokenRejected of every instance (a Metrics Insights query), 5-minute period...
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Metrics": [
                {
                    "Expression": 'SELECT SUM(MetadataNoTokenRejected) FROM SCHEMA("AWS/EC2", InstanceId)',
                    "Id": Match.any_value(),
                    "Label": Match.any_value(),
                    "Period": 300,
                    "ReturnData": True,
                }
            ],
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "EvaluationPeriods": 1,
            "TreatMissingData": "notBreaching",
            "AlarmActions": [{"Ref": _only_logical_id(template, "AWS::SNS::Topic")}],
        },
    )
    (alarm_id,) = [
        logical_id
        for logical_id, alarm in template.find_resources("AWS::CloudWatch::Alarm").items()
        if "SELECT" in json.dumps(alarm["Properties"].get("Metrics", []))
    ]
    # ...whose going into ALARM (and only that) runs the rejection watch.
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.cloudwatch"],
                "detail-type": ["CloudWatch Alarm State Change"],
                "resources": [{"Fn::GetAtt": [alarm_id, "Arn"]}],
                "detail": {"state": {"value": ["ALARM"]}},
            },
            "State": "ENABLED",
            "Targets": _rule_targets(template, REJECTION_WATCH_HANDLER),
        },
    )


def test_the_rejection_watch_reads_and_only_rolls_back_what_it_may(template: Template) -> None:
    statements = _role_policy_statements(template, REJECTION_WATCH_HANDLER)
    actions = {action for statement in statements for action in as_list(statement["Action"])}
    # rollback_on_rejected is on in this context: it may set instances back and write the exemption tag, and reads
    # the account default first; it sweeps nothing and fixes no launch source
    assert actions - {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sns:Publish",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    } == {
        "ec2:DescribeInstances",
        "cloudwatch:GetMetricData",
        "ec2:ModifyInstanceMetadataOptions",
        "ec2:CreateTags",
        "ec2:GetInstanceMetadataDefaults",
        # an untagged switch is known by its switch record
        "dynamodb:BatchGetItem",
    }


def test_the_state_table_is_encrypted_recoverable_and_expires_its_items(template: Template) -> None:
    template.has_resource_properties(
        "AWS::DynamoDB::GlobalTable",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "Replicas": [Match.object_like({"PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True}})],
            # The sparse index of open switch records: only they carry `pending`
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "pending",
                    "KeySchema": [
                        {"AttributeName": "pending", "KeyType": "HASH"},
                        {"AttributeName": "pk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        },
    )
    # Each function gets only the item operations it makes, on this table (the gate's Query on the index only).
    table_id = _only_logical_id(template, "AWS::DynamoDB::GlobalTable")
    table_arn = {"Fn::GetAtt": [table_id, "Arn"]}
    index_arn = {"Fn::Join": ["", [table_arn, "/index/pending"]]}
    expected = {
        HANDLERS["launch_watch"]: {
            ("dynamodb:BatchGetItem", json.dumps(table_arn)),
            ("dynamodb:BatchWriteItem", json.dumps(table_arn)),
            ("dynamodb:PutItem", json.dumps(table_arn)),
        },
        HANDLERS["usage_gate"]: {
            ("dynamodb:PutItem", json.dumps(table_arn)),
            ("dynamodb:BatchWriteItem", json.dumps(table_arn)),
            ("dynamodb:BatchGetItem", json.dumps(table_arn)),
            ("dynamodb:Query", json.dumps(index_arn)),
        },
        REJECTION_WATCH_HANDLER: {("dynamodb:BatchGetItem", json.dumps(table_arn))},
        SLACK_HANDLER: set(),
    }
    for handler in ALL_HANDLERS:
        grants = {
            (action, json.dumps(resource))
            for s in _role_policy_statements(template, handler)
            for action in as_list(s["Action"])
            if action.startswith("dynamodb:")
            for resource in as_list(s["Resource"])
        }
        assert grants == expected[handler], handler


# ---- IAM -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_no_identity_policy_grants_a_wildcard_action(synthesized: Any, region: str) -> None:
    # The rule is about grants: an Allow with "*" in an action gives away more than the code needs. A Deny takes
    # away and grants nothing, so the guardrail's Deny "*" (every call made with IMDSv1-delivered role
    # credentials, as AWS documents it) is not a wildcard grant; it is checked to be exactly that one statement.
    policies = list(_identity_policies(synthesized.templates[f"ImdsEnforcer-{region}"]))
    # One policy per Lambda role and the continuation's scheduler role everywhere; the guardrail managed policy only in
    # the first region's stack.
    assert len(policies) == len(ALL_HANDLERS) + 1 + (1 if region == REGIONS[0] else 0)
    wildcard_denies = []
    for logical_id, document in policies:
        for statement in document["Statement"]:
            for action in as_list(statement["Action"]):
                if statement["Effect"] == "Deny":
                    if "*" in action:
                        wildcard_denies.append(statement["Sid"])
                else:
                    assert "*" not in action, f"{logical_id} allows {action}"
    assert wildcard_denies == (["RequireImdsV2RoleCredentials"] if region == REGIONS[0] else [])


def test_roles_carry_no_managed_policies(template: Template) -> None:
    for role in template.find_resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


def test_roles_live_under_the_path_the_launch_watch_recognises_as_its_own(template: Template) -> None:
    # CloudTrail's sessionIssuer.arn carries the path: that is how a rollback by the gate is told from a regression.
    lambda_roles = template.find_resources(
        "AWS::IAM::Role", {"Properties": {"AssumeRolePolicyDocument": _trusting("lambda.amazonaws.com")}}
    )
    assert len(lambda_roles) == len(ALL_HANDLERS)
    assert {role["Properties"]["Path"] for role in lambda_roles.values()} == {Settings().SERVICE_ROLE_PATH}
    # The only other roles are the Slack channel's (AWS Chatbot) and the one EventBridge Scheduler assumes to start
    # the gate's continuation; the service path would exempt them from the guardrails.
    for service in ("chatbot.amazonaws.com", "scheduler.amazonaws.com"):
        (role,) = template.find_resources(
            "AWS::IAM::Role", {"Properties": {"AssumeRolePolicyDocument": _trusting(service)}}
        ).values()
        assert "Path" not in role["Properties"]
    assert len(template.find_resources("AWS::IAM::Role")) == len(ALL_HANDLERS) + 2


def _trusting(service: str) -> Matcher:
    return Match.object_like({"Statement": [Match.object_like({"Principal": {"Service": service}})]})


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_instance_changes_are_scoped_to_this_accounts_instances(synthesized: Any, region: str, name: str) -> None:
    statements = _role_policy_statements(synthesized.template(region), HANDLERS[name])
    instance_arn = f"arn:${{AWS::Partition}}:ec2:{region}:{ACCOUNT}:instance/*"

    for action in ("ec2:ModifyInstanceMetadataOptions", "ec2:CreateTags"):
        granting = [s for s in statements if action in as_list(s["Action"]) and s["Effect"] == "Allow"]
        assert granting, f"{name} lacks {action}"
        assert [render(resource) for s in granting for resource in as_list(s["Resource"])] == [instance_arn]


@pytest.mark.parametrize(
    ("handler", "tag_keys"),
    [
        (HANDLERS["launch_watch"], SERVICE_TAGS),
        # prepared-at for a container host's hop limit; the exemption tag because rollback_on_rejected is on; with
        # caller_analysis=run, the two analysis tags
        (
            HANDLERS["usage_gate"],
            [*SERVICE_TAGS, "imdsv2-enforcer:prepared-at", "imdsv2-exempt", *CALLER_ANALYSIS_TAG_KEYS],
        ),
        (REJECTION_WATCH_HANDLER, ["imdsv2-exempt"]),
    ],
)
def test_tagging_is_limited_to_the_service_tag_keys(template: Template, handler: str, tag_keys: list[str]) -> None:
    (create_tags,) = [s for s in _role_policy_statements(template, handler) if s["Action"] == "ec2:CreateTags"]
    assert create_tags["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": tag_keys}}


def test_only_the_gate_may_set_the_account_default_when_configured(template: Template) -> None:
    defaults = {"ec2:GetInstanceMetadataDefaults", "ec2:ModifyInstanceMetadataDefaults"}

    def actions(name: str) -> set[str]:
        return {a for s in _role_policy_statements(template, HANDLERS[name]) for a in as_list(s["Action"])}

    assert defaults <= actions("usage_gate")
    assert not defaults & actions("launch_watch")
    assert "cloudwatch:GetMetricData" in actions("usage_gate")


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_functions_may_publish_to_the_report_topic_and_use_its_key(template: Template, name: str) -> None:
    topic_id = _only_logical_id(template, "AWS::SNS::Topic")
    key_id = _only_logical_id(template, "AWS::KMS::Key")
    statements = _role_policy_statements(template, HANDLERS[name])

    assert {"Action": "sns:Publish", "Effect": "Allow", "Resource": {"Ref": topic_id}} in statements
    assert {
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Effect": "Allow",
        "Resource": {"Fn::GetAtt": [key_id, "Arn"]},
    } in statements


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_both_enforcers_read_launch_templates_launch_configurations_and_images(template: Template, name: str) -> None:
    statements = _role_policy_statements(template, HANDLERS[name])

    (reads,) = [s for s in statements if set(as_list(s["Action"])) & LAUNCH_SOURCE_READS]
    # Describe calls accept no resource ARN: Resource "*" is the only form IAM takes for them.
    assert set(reads["Action"]) == LAUNCH_SOURCE_READS
    assert reads["Resource"] == "*"


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_opted_in_launch_source_fixes_are_scoped_to_templates_and_images_here(
    synthesized: Any, region: str, name: str
) -> None:
    # Given fix_launch_templates and fix_images (the builders' tests show they are absent when off)...
    statements = _role_policy_statements(synthesized.template(region), HANDLERS[name])
    expected = {
        "ec2:CreateLaunchTemplateVersion": f"arn:${{AWS::Partition}}:ec2:{region}:{ACCOUNT}:launch-template/*",
        "ec2:ModifyLaunchTemplate": f"arn:${{AWS::Partition}}:ec2:{region}:{ACCOUNT}:launch-template/*",
        # AMI ARNs carry no account.
        "ec2:ModifyImageAttribute": f"arn:${{AWS::Partition}}:ec2:{region}::image/*",
    }

    for action, resource in expected.items():
        granting = [s for s in statements if action in as_list(s["Action"])]
        assert [render(r) for s in granting for r in as_list(s["Resource"])] == [resource], action

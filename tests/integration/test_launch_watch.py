"""The launch watch end to end under moto: real boto3 calls, real handler, reports read back from the topic."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator import REGION
from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG, SettingsError
from imds_enforcer.handlers.launch_watch import handler
from tests.support.aws import (
    ReportInbox,
    launch,
    make_inbox,
    metadata_options,
    modify_options_event,
    queue_batch,
    run_instances_event,
    set_state,
    state_change_event,
    tags_of,
)
from tests.support.context import FakeLambdaContext, RunningOutContext
from tests.support.faults import Fault, count_calls, ec2_error, inject, timeout_error

pytestmark = pytest.mark.usefixtures("aws")


@pytest.fixture
def fix_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")


def findings_of(inbox: ReportInbox) -> list[dict[str, Any]]:
    return [finding for message in inbox.drain() for finding in message.report["findings"]]


# --- flag mode -------------------------------------------------------------------------------------------------


def test_flag_mode_reports_and_changes_nothing(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given a freshly launched instance that accepts IMDSv1
    [instance_id] = launch(tags={"Name": "web-1"})

    # When its RunInstances event arrives in flag mode (the default)
    result = handler(run_instances_event([instance_id]), lambda_context)

    # Then it is flagged, left as it was, and the report says so
    assert [f["action"] for f in result["findings"]] == ["flagged"]
    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    assert ENFORCED_AT_TAG not in tags_of(instance_id)
    [message] = inbox.drain()
    assert message.attributes["action"] == "flagged"
    assert message.attributes["severity"] == "warning"
    assert message.attributes["trigger"] == "launch"
    assert message.subject == "IMDSv2: 1 flagged in 123456789012/us-east-1"
    assert message.report["mode"] == "flag"
    assert message.report["findings"][0]["resource_id"] == instance_id


# --- fix mode --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_fix_mode_requires_tokens_keeps_endpoint_and_hop_limit_and_tags(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an ordinary instance and one whose metadata endpoint is disabled
    [plain] = launch(hop_limit=1)
    [endpoint_off] = launch(hop_limit=3, endpoint="disabled")

    # When the launch event arrives in fix mode
    handler(run_instances_event([plain, endpoint_off]), lambda_context)

    # Then both require tokens, nothing else moved, and each says who enforced it and when
    assert metadata_options(plain) | {} == metadata_options(plain)
    assert metadata_options(plain)["HttpTokens"] == "required"
    assert metadata_options(plain)["HttpPutResponseHopLimit"] == 1
    assert metadata_options(endpoint_off)["HttpTokens"] == "required"
    assert metadata_options(endpoint_off)["HttpEndpoint"] == "disabled"
    assert metadata_options(endpoint_off)["HttpPutResponseHopLimit"] == 3
    for instance_id in (plain, endpoint_off):
        tags = tags_of(instance_id)
        assert tags[ENFORCED_BY_TAG] == "launch_watch"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tags[ENFORCED_AT_TAG])
    [message] = inbox.drain()
    assert message.report["counts"] == {"enforced": 2}
    assert message.attributes == message.attributes | {"action": "enforced", "severity": "info", "mode": "fix"}


@pytest.mark.usefixtures("fix_mode")
def test_exempt_instance_is_reported_and_untouched(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    [instance_id] = launch(tags={"imdsv2-exempt": "vendor appliance, ticket SEC-42"})

    handler(state_change_event(instance_id, "running"), lambda_context)

    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    [finding] = findings_of(inbox)
    assert finding["action"] == "exempt"
    assert "SEC-42" in finding["reason"]


@pytest.mark.usefixtures("fix_mode")
def test_custom_exemption_tag_key(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEMPT_TAG_KEY", "legacy-imds")
    [exempt] = launch(tags={"legacy-imds": "yes"})
    [default_tag] = launch(tags={"imdsv2-exempt": "not the configured key"})

    handler(run_instances_event([exempt, default_tag]), lambda_context)

    assert metadata_options(exempt)["HttpTokens"] == "optional"
    assert metadata_options(default_tag)["HttpTokens"] == "required"


@pytest.mark.usefixtures("fix_mode")
@pytest.mark.parametrize(
    ("tags", "hop_before", "hop_after"),
    [
        ({"eks:cluster-name": "prod"}, 1, 2),
        ({"kubernetes.io/cluster/prod": "owned"}, 1, 2),
        ({"AmazonECSManaged": ""}, 1, 2),
        ({"eks:cluster-name": "prod"}, 4, 4),  # never lowered
        ({"Name": "not a container host"}, 1, 1),
    ],
)
def test_container_hosts_get_a_hop_limit_of_two(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, tags: dict[str, str], hop_before: int, hop_after: int
) -> None:
    [instance_id] = launch(tags=tags, hop_limit=hop_before)

    handler(state_change_event(instance_id), lambda_context)

    options = metadata_options(instance_id)
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", hop_after)
    [finding] = findings_of(inbox)
    assert ("hop limit raised from 1 to 2" in finding["reason"]) == (hop_before != hop_after)


@pytest.mark.usefixtures("fix_mode")
def test_configured_container_host_tag(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTAINER_HOST_TAG_KEYS", "nomad-client")
    [instance_id] = launch(tags={"nomad-client": "true"})
    handler(state_change_event(instance_id), lambda_context)
    assert metadata_options(instance_id)["HttpPutResponseHopLimit"] == 2


@pytest.mark.usefixtures("fix_mode")
def test_regression_to_optional_is_undone(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given an instance that someone switched back to optional after it was compliant
    [instance_id] = launch(tokens="required")
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")

    # When CloudTrail's ModifyInstanceMetadataOptions event arrives
    handler(modify_options_event(instance_id, "optional", caller_role="PlatformAdmin"), lambda_context)

    # Then it is required again, and the report says it was a regression
    assert metadata_options(instance_id)["HttpTokens"] == "required"
    [finding] = findings_of(inbox)
    assert finding["action"] == "enforced"
    assert finding["reason"].startswith("regression to optional undone")


@pytest.mark.usefixtures("fix_mode")
def test_rollback_by_the_service_itself_is_left_alone(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given the gate (a role under the service's IAM path, the default setting) rolled an instance back
    [instance_id] = launch()
    event = modify_options_event(
        instance_id, caller_role=f"imds-enforcer-usage-gate-{REGION}", caller_role_path="/imds-enforcer/"
    )

    result = handler(event, lambda_context)

    assert result["status"] == "ignored"
    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    assert inbox.drain() == []


@pytest.mark.usefixtures("fix_mode")
def test_duplicate_delivery_changes_and_reports_nothing_the_second_time(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    [instance_id] = launch()
    event = run_instances_event([instance_id])

    handler(event, lambda_context)
    enforced_at = tags_of(instance_id)[ENFORCED_AT_TAG]
    first = inbox.drain()
    second_result = handler(copy.deepcopy(event), lambda_context)

    assert [f["action"] for m in first for f in m.report["findings"]] == ["enforced"]
    assert second_result["findings"] == []
    assert inbox.drain() == []
    assert tags_of(instance_id)[ENFORCED_AT_TAG] == enforced_at


@pytest.mark.usefixtures("fix_mode")
def test_already_required_instances_publish_nothing(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    ids = launch(tokens="required", count=2)
    result = handler(run_instances_event(ids), lambda_context)
    assert result == {"status": "processed", "reason": "", "findings": [], "published": 0}
    assert inbox.drain() == []


@pytest.mark.usefixtures("fix_mode")
def test_foreign_account_event_changes_nothing(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    [instance_id] = launch()
    result = handler(run_instances_event([instance_id], account="210987654321"), lambda_context)
    assert result["status"] == "ignored"
    assert "210987654321" in str(result["reason"])
    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    assert inbox.drain() == []


@pytest.mark.usefixtures("fix_mode")
def test_mixed_event_reports_every_instance(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    [optional] = launch()
    [exempt] = launch(tags={"imdsv2-exempt": "yes"})
    [required] = launch(tokens="required")
    missing = "i-0123456789abcdef0"

    handler(run_instances_event([optional, exempt, required, missing]), lambda_context)

    by_id = {f["resource_id"]: f for f in findings_of(inbox)}
    assert by_id[optional]["action"] == "enforced"
    assert by_id[exempt]["action"] == "exempt"
    assert by_id[missing]["action"] == "failed"
    assert by_id[missing]["error_code"] == "InvalidInstanceID.NotFound"
    assert required not in by_id


@pytest.mark.usefixtures("fix_mode")
def test_pending_instance_is_left_to_its_running_event(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given an instance EC2 still reports as pending (it refuses modifies until running)
    [instance_id] = launch()
    set_state(instance_id, "pending")
    counter = count_calls(clients.ec2(), clients.sns())

    # When its RunInstances event arrives, then (once running) its state-change event
    first = handler(run_instances_event([instance_id]), lambda_context)
    set_state(instance_id, "running")
    second = handler(state_change_event(instance_id, "running"), lambda_context)

    # Then the first does nothing and reports nothing; the second enforces it
    assert first["findings"] == []
    assert [f["action"] for f in second["findings"]] == ["enforced"]
    assert counter.counts["ModifyInstanceMetadataOptions"] == 1
    assert [m.report["counts"] for m in inbox.drain()] == [{"enforced": 1}]


# --- failures --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_pending_instance_fails_then_running_event_gives_a_second_chance(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, retry_delays: list[int]
) -> None:
    # Given an instance still pending, which EC2 will not modify yet
    [instance_id] = launch()
    fault = inject(clients.ec2(), "ModifyInstanceMetadataOptions", Fault(ec2_error("IncorrectInstanceState"), times=1))

    # When the pending event arrives, then the running event
    first = handler(state_change_event(instance_id, "pending"), lambda_context)
    second = handler(state_change_event(instance_id, "running"), lambda_context)

    # Then the first reports the failure with its code, and the second enforces it
    assert [(f["action"], f.get("error_code")) for f in first["findings"]] == [("failed", "IncorrectInstanceState")]
    assert [f["action"] for f in second["findings"]] == ["enforced"]
    assert metadata_options(instance_id)["HttpTokens"] == "required"
    assert fault.injected == 1
    messages = inbox.drain()
    assert [m.attributes["severity"] for m in messages] == ["high", "info"]


@pytest.mark.usefixtures("fix_mode")
def test_instance_gone_between_describe_and_modify(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, retry_delays: list[int]
) -> None:
    [gone, fine] = launch(count=2)
    inject(
        clients.ec2(),
        "ModifyInstanceMetadataOptions",
        Fault(ec2_error("InvalidInstanceID.NotFound", f"The instance ID '{gone}' does not exist"), only_for=gone),
    )

    result = handler(run_instances_event([gone, fine]), lambda_context)

    actions = {f["resource_id"]: (f["action"], f.get("error_code")) for f in result["findings"]}
    assert actions == {gone: ("failed", "InvalidInstanceID.NotFound"), fine: ("enforced", None)}
    assert metadata_options(fine)["HttpTokens"] == "required"


@pytest.mark.usefixtures("fix_mode")
def test_throttling_is_retried_then_succeeds(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, retry_delays: list[int]
) -> None:
    [instance_id] = launch()
    fault = inject(
        clients.ec2(), "ModifyInstanceMetadataOptions", Fault(ec2_error("RequestLimitExceeded", status=503), times=2)
    )

    result = handler(state_change_event(instance_id), lambda_context)

    assert [f["action"] for f in result["findings"]] == ["enforced"]
    assert fault.sends == 3
    assert retry_delays == [1, 2]


@pytest.mark.usefixtures("fix_mode")
def test_throttling_after_all_retries_is_a_failed_finding_not_a_crash(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, retry_delays: list[int]
) -> None:
    [throttled, other] = launch(count=2)
    fault = inject(
        clients.ec2(),
        "ModifyInstanceMetadataOptions",
        Fault(ec2_error("RequestLimitExceeded", status=503), only_for=throttled),
    )

    result = handler(run_instances_event([throttled, other]), lambda_context)

    by_id = {f["resource_id"]: f for f in result["findings"]}
    assert by_id[throttled]["error_code"] == "RequestLimitExceeded"
    assert "after 5 retries" in by_id[throttled]["reason"]
    assert by_id[other]["action"] == "enforced"
    assert fault.injected == 6  # 1 send + 5 retries (standard mode; max_attempts counts retries here)
    assert metadata_options(throttled)["HttpTokens"] == "optional"


@pytest.mark.usefixtures("fix_mode", "retry_delays")
def test_an_error_a_retry_can_fix_is_reported_then_raised_for_lambda_retry(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    [broken, fine] = launch(count=2)
    inject(
        clients.ec2(), "ModifyInstanceMetadataOptions", Fault(ec2_error("InternalError", status=500), only_for=broken)
    )

    with pytest.raises(UnexpectedAwsError, match="InternalError"):
        handler(run_instances_event([broken, fine]), lambda_context)

    # the report still went out, with the other instance enforced
    by_id = {f["resource_id"]: f for f in findings_of(inbox)}
    assert by_id[broken]["error_code"] == "InternalError"
    assert by_id[fine]["action"] == "enforced"


@pytest.mark.usefixtures("fix_mode")
def test_a_refusal_by_a_policy_is_reported_once_and_not_raised(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an SCP that refuses the change on one instance (a retry would be refused the same way)
    [denied, fine] = launch(count=2)
    inject(clients.ec2(), "ModifyInstanceMetadataOptions", Fault(ec2_error("UnauthorizedOperation"), only_for=denied))

    # When the launch is handled, the handler returns (no retry, no dead letter)
    result = handler(run_instances_event([denied, fine]), lambda_context)

    by_id = {f["resource_id"]: f for f in findings_of(inbox)}
    assert by_id[denied]["action"] == "failed"
    assert by_id[denied]["error_code"] == "UnauthorizedOperation"
    assert "refused by a policy" in by_id[denied]["reason"]
    assert by_id[fine]["action"] == "enforced"
    assert result["published"] == 1


@pytest.mark.usefixtures("fix_mode")
def test_an_exemption_tagged_during_the_run_is_reported_exempt_when_iam_refuses_the_change(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an instance read as optional and untagged, tagged exempt by a person just before the modify: IAM's
    # exemption condition (aws:ResourceTag) refuses the role's change, as AWS would answer it
    [instance_id] = launch()

    def tag_then_refuse(request: Any, **kwargs: Any) -> Any:
        boto3.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": "imdsv2-exempt", "Value": "CHG-7"}])
        return refusal(request, **kwargs)

    refusal = Fault(ec2_error("UnauthorizedOperation", "You are not authorized to perform this operation.", 403))
    clients.ec2().meta.events.register_first("before-send.ec2.ModifyInstanceMetadataOptions", tag_then_refuse)

    result = handler(state_change_event(instance_id), lambda_context)

    # Then it is reported exempt (exempted during the run), nothing changed, and nothing raised
    [finding] = findings_of(inbox)
    assert (finding["action"], finding["details"]["exempted_during_run"]) == ("exempt", "true")
    assert "CHG-7" in finding["reason"]
    assert "UnauthorizedOperation" in finding["reason"]
    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    assert result["status"] == "processed"


@pytest.mark.usefixtures("fix_mode", "retry_delays")
def test_a_read_timeout_on_the_modify_is_a_failed_finding_naming_it_then_raised(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an instance whose modify never gets an answer (botocore's ReadTimeoutError, retried, then given up)
    [instance_id, fine] = launch(count=2)
    fault = inject(clients.ec2(), "ModifyInstanceMetadataOptions", Fault(timeout_error(), only_for=instance_id))

    with pytest.raises(UnexpectedAwsError, match="ReadTimeoutError"):
        handler(run_instances_event([instance_id, fine]), lambda_context)

    by_id = {f["resource_id"]: f for f in findings_of(inbox)}
    assert (by_id[instance_id]["action"], by_id[instance_id]["error_code"]) == ("failed", "ReadTimeoutError")
    assert "Read timeout" in by_id[instance_id]["reason"]
    assert by_id[fine]["action"] == "enforced"
    assert fault.injected == 6  # botocore retried it like any connection failure


@pytest.mark.usefixtures("fix_mode")
def test_describe_failure_is_reported_per_instance_raises_and_changes_nothing(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, retry_delays: list[int]
) -> None:
    [instance_id] = launch()
    inject(clients.ec2(), "DescribeInstances", Fault(ec2_error("InternalError", status=500)))

    # The run raises (a retry can fix it) after reporting the instance it could not read
    with pytest.raises(UnexpectedAwsError, match=r"DescribeInstances.*InternalError"):
        handler(state_change_event(instance_id), lambda_context)

    assert metadata_options(instance_id)["HttpTokens"] == "optional"
    [finding] = findings_of(inbox)
    assert (finding["resource_id"], finding["action"], finding["error_code"]) == (
        instance_id,
        "failed",
        "InternalError",
    )


def test_bad_setting_fails_loudly_naming_the_variable(
    lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "enforce")
    with pytest.raises(SettingsError, match="ENFORCEMENT_MODE"):
        handler(state_change_event("i-0abc"), lambda_context)


# --- API calls -------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_fifty_new_instances_take_one_describe_one_image_lookup_one_tag_call_and_one_publish(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    ids = launch(count=50)
    counter = count_calls(clients.ec2(), clients.sns())

    handler(run_instances_event(ids), lambda_context)

    assert counter.counts == {
        "DescribeInstances": 1,
        "DescribeImages": 1,  # their AMIs' names: a container host is recognised by its AMI family too
        "ModifyInstanceMetadataOptions": 50,
        "CreateTags": 1,
        "Publish": 1,
    }
    assert all(metadata_options(i)["HttpTokens"] == "required" for i in ids)


# --- the real payloads -----------------------------------------------------------------------------------------


@pytest.fixture
def sample_events(samples_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((samples_dir / "events").glob("*.json"))]


@pytest.mark.usefixtures("fix_mode")
def test_every_sample_event_is_handled_without_an_exception(
    sample_events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for event in sample_events:
        # Given the function deployed in the event's own account and region
        region = event["region"] if re.fullmatch(r"[a-z]{2}-[a-z]+-\d", event["region"]) else "us-east-1"
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)
        monkeypatch.setenv("AWS_REGION", region)
        clients.reset_clients()
        box = make_inbox(f"reports-{event['id'][:8]}")
        monkeypatch.setenv("REPORT_TOPIC_ARN", box.topic_arn)
        context = FakeLambdaContext(account=event["account"], region=event["region"])

        # When it is delivered
        result = handler(event, context)

        # Then it is either ignored with a reason, or every instance it names is in the report
        if result["status"] == "ignored":
            assert result["reason"]
            assert box.drain() == []
        else:
            named = {i["instanceId"] for i in event["detail"]["responseElements"]["instancesSet"]["items"]}
            reported = {f["resource_id"] for m in box.drain() for f in m.report["findings"]}
            assert reported == named  # not in this account: each one a `failed` NotFound finding


@pytest.mark.usefixtures("fix_mode")
def test_real_console_launch_of_two_instances_is_enforced(
    samples_dir: Path, inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given the recorded 2024 console launch, with its two instances standing in for instances in this account
    sample = json.loads(
        (
            samples_dir / "events" / "cloudtrail_runinstances_2-instances_sso-role_console-useragent_2024.json"
        ).read_text()
    )
    ids = launch(count=2)
    event = copy.deepcopy(sample)
    # (our copy: the instances stand in for the recorded ones, so the event is about their launch, now)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event.update(account=lambda_context.account, region=lambda_context.region, time=now)
    event["detail"].update(recipientAccountId=lambda_context.account, awsRegion=lambda_context.region)
    for item, instance_id in zip(event["detail"]["responseElements"]["instancesSet"]["items"], ids, strict=True):
        item["instanceId"] = instance_id

    # When it is delivered in fix mode
    handler(event, lambda_context)

    # Then both instances require tokens
    assert [metadata_options(i)["HttpTokens"] for i in ids] == ["required", "required"]
    assert {f["resource_id"] for f in findings_of(inbox)} == set(ids)


# --- metrics ---------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fix_mode")
def test_handler_emits_a_count_per_action_as_embedded_metrics(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    [instance_id] = launch()
    capsys.readouterr()

    handler(state_change_event(instance_id), lambda_context)

    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    [blob] = emf
    assert blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ImdsEnforcer"
    assert blob["service"] == "imds-enforcer"
    assert (blob["Enforced"], blob["Failed"], blob["Rejected"], blob["EventsProcessed"]) == ([1.0], [0.0], [0.0], [1.0])


# --- bursts: EventBridge -> SQS -> one invocation ---------------------------------------------------------------


def test_an_auto_scaling_burst_is_one_report(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given an Auto Scaling group scaling out by 50 (50 `running` events, gathered by the queue into one batch),
    # plus a message that is not JSON at all
    ids = launch(count=50)
    batch = queue_batch([state_change_event(instance_id) for instance_id in ids], extra_bodies=("not json",))

    # When the launch watch reads the batch (flag mode)
    result = handler(batch, lambda_context)

    # Then one message reaches the topic (so one Slack post), naming every instance once
    [message] = inbox.drain()
    assert sorted(f["resource_id"] for f in message.findings) == sorted(ids)
    assert {f["action"] for f in message.findings} == {"flagged"}
    assert message.report["totals"]["events"] == 50
    assert message.report["totals"]["events_ignored"] == 1
    assert result["batchItemFailures"] == []


@pytest.mark.usefixtures("fix_mode")
def test_a_batch_mixing_launches_set_backs_and_foreign_events_is_one_report(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    [new, set_back] = launch(count=2)
    batch = queue_batch(
        [
            run_instances_event([new]),
            modify_options_event(set_back, "optional", caller_role="PlatformAdmin"),
            state_change_event(new),  # the same launch again
            state_change_event("i-0aaaaaaaaaaaaaaaa", account="999999999999"),
        ]
    )

    result = handler(batch, lambda_context)

    [message] = inbox.drain()
    assert sorted((f["resource_id"], f["action"]) for f in message.findings) == sorted(
        [(new, "enforced"), (set_back, "enforced")]
    )
    assert message.report["totals"]["events"] == 3
    assert message.report["totals"]["events_ignored"] == 1
    assert result["status"] == "processed"


@pytest.mark.usefixtures("fix_mode")
def test_a_burst_is_read_and_switched_with_the_calls_of_one_event(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an Auto Scaling group scaling out by 50 (50 `running` events in one batch), fix mode
    ids = launch(count=50)
    counter = count_calls(clients.ec2(), clients.sns())

    # When the launch watch reads the batch
    handler(queue_batch([state_change_event(instance_id) for instance_id in ids]), lambda_context)

    # Then the 50 instances are read, looked up, switched, tagged and reported as one RunInstances of 50 would be
    assert counter.counts == {
        "DescribeInstances": 1,
        "DescribeImages": 1,
        "ModifyInstanceMetadataOptions": 50,
        "CreateTags": 1,
        "Publish": 1,
    }
    assert all(metadata_options(i)["HttpTokens"] == "required" for i in ids)
    [message] = inbox.drain()
    assert sorted(f["resource_id"] for f in message.findings) == sorted(ids)


def test_a_launch_two_events_of_one_batch_name_is_flagged_once(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a new instance announced by CloudTrail's RunInstances and by its running state change, in one batch
    [new] = launch()

    # When the batch is read (flag mode, no state table to remember verdicts in)
    handler(queue_batch([run_instances_event([new]), state_change_event(new)]), lambda_context)

    # Then it is flagged once
    [message] = inbox.drain()
    assert [(f["resource_id"], f["action"]) for f in message.findings] == [(new, "flagged")]
    assert message.report["totals"]["instances_in_event"] == 2  # named twice, decided once


@pytest.mark.usefixtures("fix_mode")
def test_a_burst_larger_than_the_runs_time_is_finished_by_the_queues_redelivery(inbox: ReportInbox) -> None:
    # Given five launches in one batch, and a run whose time is nearly up after two modifies
    ids = launch(count=5)
    batch = queue_batch([state_change_event(instance_id) for instance_id in ids])

    # When the launch watch reads the batch
    result = handler(batch, RunningOutContext(budget=2))

    # Then two are switched, three are reported ready (deferred), and their three messages are handed back to SQS
    [message] = inbox.drain()
    actions = {f["resource_id"]: f["action"] for f in message.findings}
    switched = [i for i in ids if actions[i] == "enforced"]
    waiting = [i for i in ids if actions[i] == "ready"]
    assert (len(switched), len(waiting)) == (2, 3)
    assert all(metadata_options(i)["HttpTokens"] == "optional" for i in waiting)
    assert message.report["totals"]["events_delivered_again"] == 3
    again = {failure["itemIdentifier"] for failure in result["batchItemFailures"]}
    records = {record["messageId"]: record for record in batch["Records"]}
    assert {json.loads(records[m]["body"])["detail"]["instance-id"] for m in again} == set(waiting)

    # When SQS delivers those three messages again
    handler({"Records": [records[m] for m in sorted(again)]}, FakeLambdaContext())

    # Then the three are switched and reported, and nothing is switched or reported twice
    [second] = inbox.drain()
    assert sorted((f["resource_id"], f["action"]) for f in second.findings) == sorted((i, "enforced") for i in waiting)
    assert all(metadata_options(i)["HttpTokens"] == "required" for i in ids)


@pytest.mark.usefixtures("fix_mode")
def test_a_bare_event_the_run_had_no_time_for_is_reported_then_raised_for_lambdas_retry(
    inbox: ReportInbox,
) -> None:
    [instance_id] = launch()

    with pytest.raises(UnexpectedAwsError, match="time ran out"):
        handler(state_change_event(instance_id), RunningOutContext(budget=0))

    [message] = inbox.drain()
    [finding] = message.findings
    assert (finding["action"], finding["details"]["deferred"]) == ("ready", "true")
    assert metadata_options(instance_id)["HttpTokens"] == "optional"


def test_a_batch_of_only_unreadable_messages_is_ignored_without_raising(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    result = handler(queue_batch([], extra_bodies=("{", "[]")), lambda_context)

    assert result["status"] == "ignored"
    assert result["batchItemFailures"] == []
    assert inbox.drain() == []

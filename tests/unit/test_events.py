"""Reading incoming events: every real payload in ../shared/aws-samples/events, and our own edge cases."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from emulator import ACCOUNT, REGION
from imds_enforcer.domain.events import (
    AlarmTrigger,
    Ignored,
    LaunchTrigger,
    TriggerKind,
    read_alarm_event,
    read_batch,
    read_launch_event,
)
from tests.support.aws import modify_options_event, queue_batch, run_instances_event, state_change_event

# What each real payload asks of the launch watch, read in its own account and region.
SAMPLE_EXPECTATIONS: dict[str, tuple[str, Any]] = {
    "cloudtrail-serviceevent_bidfulfilledevent_spot_awsserviceevent.json": ("ignored", "detail-type"),
    "cloudtrail_modifyinstancemetadataoptions_error-invalidparametervalue_prewrapped.json": ("ignored", "aws.sqs"),
    "cloudtrail_runinstances_2-instances_sso-role_console-useragent_2024.json": (
        "run_instances",
        ("i-00000000000000000", "i-00000000000000001"),
    ),
    "cloudtrail_runinstances_autoscaling-eks-fleet_launchtemplate-no-imageid_httptokens-required.json": (
        "run_instances",
        ("i-07d06021b0da55115",),
    ),
    "cloudtrail_runinstances_autoscaling-invoked_2-instances_us-west-1_2016.json": (
        "run_instances",
        ("i-784cdacd", "i-7b4cdace"),
    ),
    "cloudtrail_runinstances_dryrun-eks-nodegroup_no-responseelements-key.json": ("ignored", "DryRunOperation"),
    "cloudtrail_runinstances_error-unauthorizedoperation_responseelements-null_maxcount-10.json": (
        "ignored",
        "UnauthorizedOperation",
    ),
    "cloudtrail_runinstances_metadataoptions-optional_prewrapped_source-aws.sqs.json": ("ignored", "aws.sqs"),
    "cloudtrail_runinstances_request-metadataoptions-httptokens-optional_numbers-as-strings.json": (
        "run_instances",
        ("i-05261ffb46217cdc3",),
    ),
    "scheduled-event_epoch-time_no-version-field_c7n.json": ("ignored", "aws.events"),
}


def load(samples_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((samples_dir / "events" / name).read_text())
    return data


def test_every_sample_event_has_an_expectation(samples_dir: Path) -> None:
    present = {path.name for path in (samples_dir / "events").glob("*.json")}
    assert present == set(SAMPLE_EXPECTATIONS), "a new sample event arrived: say what it should do"


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTATIONS))
def test_sample_event_is_read_as_expected(samples_dir: Path, name: str) -> None:
    # Given a real payload, read in the account and region it came from
    event = load(samples_dir, name)
    kind, expected = SAMPLE_EXPECTATIONS[name]

    # When the launch watch reads it
    result = read_launch_event(event, account=event["account"], region=event["region"])

    # Then it asks for exactly the instances it names, or is ignored with a reason a person can act on
    if kind == "ignored":
        assert isinstance(result, Ignored)
        assert expected in result.reason
    else:
        assert isinstance(result, LaunchTrigger)
        assert result.kind is TriggerKind(kind)
        assert result.instance_ids == expected
        assert result.event_id == event["id"]


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTATIONS))
def test_sample_event_from_another_account_is_ignored(samples_dir: Path, name: str) -> None:
    event = load(samples_dir, name)
    result = read_launch_event(event, account="999999999999", region=event["region"])
    assert isinstance(result, Ignored)
    assert "999999999999" in result.reason


def test_failed_modify_call_in_its_real_shape_is_ignored_even_from_ec2(samples_dir: Path) -> None:
    # Given the only recorded ModifyInstanceMetadataOptions, delivered with the right source this time
    event = copy.deepcopy(
        load(samples_dir, "cloudtrail_modifyinstancemetadataoptions_error-invalidparametervalue_prewrapped.json")
    )
    event["source"] = "aws.ec2"
    # When read: the call failed (responseElements null), so it changed nothing
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "Client.InvalidParameterValue" in result.reason


def test_run_instances_from_the_wrong_region_is_ignored(samples_dir: Path) -> None:
    event = load(samples_dir, "cloudtrail_runinstances_autoscaling-invoked_2-instances_us-west-1_2016.json")
    result = read_launch_event(event, account=event["account"], region="eu-west-1")
    assert isinstance(result, Ignored)
    assert "us-west-1" in result.reason


@pytest.mark.parametrize("id_key", ["instance-id", "instance_id"])
@pytest.mark.parametrize("state", ["pending", "running"])
def test_state_change_pending_or_running_names_the_instance(id_key: str, state: str) -> None:
    event = state_change_event("i-0abc1234def567890", state, id_key=id_key)
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, LaunchTrigger)
    assert (result.kind, result.instance_ids, result.event_id) == (
        TriggerKind.STATE_CHANGE,
        ("i-0abc1234def567890",),
        event["id"],
    )
    # the envelope's time: the launch watch compares it with the instance's first launch
    assert result.event_time == datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


@pytest.mark.parametrize("state", ["terminated", "stopping", "stopped", "shutting-down"])
def test_state_change_to_other_states_is_ignored(state: str) -> None:
    result = read_launch_event(state_change_event("i-0abc1234def567890", state), account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert state in result.reason


def test_state_change_without_version_is_accepted() -> None:
    event = state_change_event("i-0abc1234def567890")
    del event["version"]
    assert isinstance(read_launch_event(event, account=ACCOUNT, region=REGION), LaunchTrigger)


def test_regression_to_optional_by_a_person_is_a_trigger() -> None:
    result = read_launch_event(modify_options_event("i-0abc1234def567890"), account=ACCOUNT, region=REGION)
    assert isinstance(result, LaunchTrigger)
    assert result.kind is TriggerKind.REGRESSION


def test_modify_to_required_is_not_a_regression() -> None:
    result = read_launch_event(modify_options_event("i-0abc", "required"), account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "does not set HttpTokens to optional" in result.reason


@pytest.mark.parametrize("function", ["usage-gate", "rejection-watch"])
def test_rollback_by_this_service_is_not_a_regression(function: str) -> None:
    event = modify_options_event(
        "i-0abc", caller_role=f"imds-enforcer-{function}-{REGION}", caller_role_path="/imds-enforcer/"
    )
    result = read_launch_event(event, account=ACCOUNT, region=REGION, service_role_path="/imds-enforcer/")
    assert isinstance(result, Ignored)
    assert "by this service" in result.reason


@pytest.mark.parametrize(
    ("role", "path"),
    [
        # someone else's role under the service's path (anyone allowed iam:CreateRole picks the path)
        ("attacker", "/imds-enforcer/"),
        ("imds-enforcer-usage-gate-lookalike", "/imds-enforcer/"),
        # the service's role name outside its path
        (f"imds-enforcer-usage-gate-{REGION}", "/"),
        # the service's role of another region's deployment
        ("imds-enforcer-usage-gate-eu-west-1", "/imds-enforcer/"),
    ],
)
def test_a_role_that_only_looks_like_the_services_is_a_regression(role: str, path: str) -> None:
    event = modify_options_event("i-0abc", caller_role=role, caller_role_path=path)
    result = read_launch_event(event, account=ACCOUNT, region=REGION, service_role_path="/imds-enforcer/")
    assert isinstance(result, LaunchTrigger)


def test_the_services_role_name_in_another_account_is_a_regression() -> None:
    event = modify_options_event(
        "i-0abc", caller_role=f"imds-enforcer-usage-gate-{REGION}", caller_role_path="/imds-enforcer/"
    )
    issuer = event["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]
    issuer["arn"] = issuer["arn"].replace(f":{ACCOUNT}:", ":999999999999:")
    result = read_launch_event(event, account=ACCOUNT, region=REGION, service_role_path="/imds-enforcer/")
    assert isinstance(result, LaunchTrigger)


def test_camel_case_modify_request_is_read_too() -> None:
    event = modify_options_event("i-0abc")
    event["detail"]["requestParameters"] = {"instanceId": "i-0abc", "httpTokens": "optional"}
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, LaunchTrigger)
    assert result.instance_ids == ("i-0abc",)


def test_duplicate_and_invalid_instance_ids() -> None:
    event = run_instances_event(["i-0aaa", "i-0aaa", "not-an-instance", "i-0bbb"])
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, LaunchTrigger)
    assert result.instance_ids == ("i-0aaa", "i-0bbb")
    assert result.rejected_ids == ("not-an-instance",)


def test_only_invalid_ids_is_ignored_naming_them() -> None:
    result = read_launch_event(run_instances_event(["bogus"]), account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "'bogus'" in result.reason


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda e: e.pop("detail"), "detail"),
        (lambda e: e.pop("account"), "account"),
        (lambda e: e.update({"time": "yesterday"}), "time"),
        (lambda e: e["detail"].pop("eventName"), "eventName"),
        (lambda e: e["detail"].update({"responseElements": {"instancesSet": {"items": [{"x": 1}]}}}), "instanceId"),
    ],
)
def test_malformed_events_are_ignored_naming_the_field(mutate: Any, fragment: str) -> None:
    event = run_instances_event(["i-0aaa"])
    mutate(event)
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "malformed" in result.reason
    assert fragment in result.reason


@pytest.mark.parametrize("raw", [None, [], "RunInstances", 42])
def test_non_objects_are_ignored(raw: object) -> None:
    result = read_launch_event(raw, account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "not a JSON object" in result.reason


def test_cloudtrail_event_for_another_recipient_account_is_ignored() -> None:
    event = run_instances_event(["i-0aaa"])
    event["detail"]["recipientAccountId"] = "210987654321"
    result = read_launch_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert "210987654321" in result.reason


def test_numbers_as_strings_are_accepted() -> None:
    event = run_instances_event(["i-0aaa"])
    event["detail"]["responseElements"]["instancesSet"]["items"][0]["instanceState"] = {"code": "0", "name": "pending"}
    assert isinstance(read_launch_event(event, account=ACCOUNT, region=REGION), LaunchTrigger)


# --- the rejection alarm's trigger -------------------------------------------------------------------------------


def _alarm(state: str = "ALARM", **envelope_fields: Any) -> dict[str, Any]:
    event = {
        "version": "0",
        "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": ACCOUNT,
        "time": "2026-11-20T12:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:RejectedNow"],
        "detail": {"alarmName": "RejectedNow", "state": {"value": state, "reason": "Threshold Crossed"}},
    }
    return {**event, **envelope_fields}


def test_an_alarm_going_into_alarm_runs_the_rejection_watch() -> None:
    trigger = read_alarm_event(_alarm(), account=ACCOUNT, region=REGION)
    assert trigger == AlarmTrigger(
        kind="alarm", event_id="c4c1c1c9-6542-e61b-6ef0-8c4d36933a92", alarm_name="RejectedNow"
    )
    assert read_alarm_event({}, account=ACCOUNT, region=REGION) == AlarmTrigger(kind="manual")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_alarm("OK"), "not ALARM"),
        (_alarm("INSUFFICIENT_DATA"), "not ALARM"),
        (_alarm(account="210987654321"), "210987654321"),
        (_alarm(region="eu-west-1"), "eu-west-1"),
        (_alarm(source="aws.ec2"), "not a CloudWatch alarm state change"),
        ([1, 2], "not a JSON object"),
        (_alarm(detail="not a mapping"), "not ALARM"),
    ],
)
def test_anything_else_is_ignored_with_a_reason(event: Any, reason: str) -> None:
    result = read_alarm_event(event, account=ACCOUNT, region=REGION)
    assert isinstance(result, Ignored)
    assert reason in result.reason


def test_a_queue_batch_keeps_each_events_message_and_skips_what_is_not_json() -> None:
    events = [state_change_event("i-0aaaaaaaaaaaaaaaa"), state_change_event("i-0bbbbbbbbbbbbbbbb")]
    raw = queue_batch(events, extra_bodies=("not json",))
    raw["Records"].insert(0, raw["Records"].pop())  # the unreadable message first: the ids must still line up

    batch = read_batch(raw)

    assert batch.from_queue
    assert batch.events == tuple(events)
    assert batch.message_ids == ("m-0", "m-1")
    assert batch.skipped == ("SQS message m-2: body is not JSON",)


def test_a_bare_event_is_a_batch_of_one_without_messages() -> None:
    event = state_change_event("i-0aaaaaaaaaaaaaaaa")

    batch = read_batch(event)

    assert (batch.events, batch.message_ids, batch.from_queue) == ((event,), (), False)

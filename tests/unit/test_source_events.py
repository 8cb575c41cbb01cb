"""Reading the CloudTrail calls that create or change a launch source (templates, AMIs, launch configurations).

The shapes come from AWS documentation examples, not recorded payloads (see tests/support/source_events.py), so
the reader is liberal: wrappers or none, camelCase or PascalCase; these tests pin both.
"""

from __future__ import annotations

from typing import Any

import pytest

from emulator.events import (
    ACCOUNT,
    REGION,
    cloudtrail_event,
    create_launch_configuration_event,
    create_launch_template_event,
    create_launch_template_version_event,
    modify_launch_template_event,
    register_image_event,
)
from imds_enforcer.domain.events import Ignored, SourceKind, SourceTrigger, read_launch_event

TEMPLATE_ID = "lt-0abcd290751193123"
IMAGE_ID = "ami-0abcdef1234567890"


def read(event: dict[str, Any]) -> SourceTrigger | Ignored:
    result = read_launch_event(event, account=ACCOUNT, region=REGION, service_role_path="/imds-enforcer/")
    assert not isinstance(result, Ignored) or result.reason
    assert isinstance(result, SourceTrigger | Ignored)
    return result


@pytest.mark.parametrize(
    ("event", "kind", "resource_id"),
    [
        (create_launch_template_event(TEMPLATE_ID), SourceKind.LAUNCH_TEMPLATE, TEMPLATE_ID),
        (create_launch_template_version_event(TEMPLATE_ID), SourceKind.LAUNCH_TEMPLATE, TEMPLATE_ID),
        (modify_launch_template_event(TEMPLATE_ID), SourceKind.LAUNCH_TEMPLATE, TEMPLATE_ID),
        (register_image_event(IMAGE_ID), SourceKind.IMAGE, IMAGE_ID),
        (create_launch_configuration_event("legacy-lc"), SourceKind.LAUNCH_CONFIGURATION, "legacy-lc"),
    ],
    ids=["CreateLaunchTemplate", "CreateLaunchTemplateVersion", "ModifyLaunchTemplate", "RegisterImage", "CreateLC"],
)
def test_each_source_call_names_what_it_created_or_changed(
    event: dict[str, Any], kind: SourceKind, resource_id: str
) -> None:
    # Given a successful call in this account and region
    # When the launch watch reads it
    result = read(event)

    # Then it asks for a check of exactly that resource
    assert isinstance(result, SourceTrigger)
    assert (result.kind, result.resource_ids) == (kind, (resource_id,))
    assert result.event_name == event["detail"]["eventName"]


def test_modify_launch_template_without_response_falls_back_to_the_request() -> None:
    event = modify_launch_template_event(TEMPLATE_ID)
    event["detail"]["responseElements"] = None

    result = read(event)

    assert isinstance(result, SourceTrigger)
    assert result.resource_ids == (TEMPLATE_ID,)


@pytest.mark.parametrize(
    ("request_parameters", "response_elements"),
    [
        # No wrappers, PascalCase response keys
        ({}, {"LaunchTemplate": {"LaunchTemplateId": TEMPLATE_ID}}),
        # camelCase request keys only
        ({"modifyLaunchTemplateRequest": {"launchTemplateId": TEMPLATE_ID}}, None),
        # Flat request
        ({"LaunchTemplateId": TEMPLATE_ID}, {}),
    ],
)
def test_template_ids_are_found_in_any_casing_or_wrapper(
    request_parameters: dict[str, Any], response_elements: dict[str, Any] | None
) -> None:
    event = cloudtrail_event("ModifyLaunchTemplate", request=request_parameters, response=response_elements)

    result = read(event)

    assert isinstance(result, SourceTrigger)
    assert result.resource_ids == (TEMPLATE_ID,)


def test_create_launch_configuration_succeeds_with_null_response_elements() -> None:
    # AWS's own example records CreateLaunchConfiguration with responseElements null: that is success, not failure
    event = create_launch_configuration_event("my-lc")
    assert event["detail"]["responseElements"] is None

    result = read(event)

    assert isinstance(result, SourceTrigger)
    assert result.kind is SourceKind.LAUNCH_CONFIGURATION


@pytest.mark.parametrize(
    "event",
    [
        create_launch_template_event(TEMPLATE_ID, error_code="Client.UnauthorizedOperation"),
        register_image_event(IMAGE_ID, error_code="Client.InvalidParameterValue"),
        create_launch_configuration_event("lc", error_code="AlreadyExists"),
    ],
)
def test_failed_calls_are_ignored(event: dict[str, Any]) -> None:
    result = read(event)

    assert isinstance(result, Ignored)
    assert "failed with" in result.reason


def test_the_services_own_template_changes_are_ignored() -> None:
    # Given the fix's own CreateLaunchTemplateVersion, made by a role under the service's IAM path
    event = create_launch_template_version_event(
        TEMPLATE_ID, caller_role=f"imds-enforcer-usage-gate-{REGION}", caller_role_path="/imds-enforcer/"
    )

    result = read(event)

    # Then it is not checked again mid-fix
    assert isinstance(result, Ignored)
    assert "made by this service" in result.reason


def test_autoscaling_event_must_come_from_autoscaling() -> None:
    event = create_launch_configuration_event("lc")
    event["detail"]["eventSource"] = "ec2.amazonaws.com"

    result = read(event)

    assert isinstance(result, Ignored)
    assert "not autoscaling.amazonaws.com" in result.reason


def test_ec2_source_calls_under_the_autoscaling_source_are_ignored() -> None:
    event = create_launch_template_event(TEMPLATE_ID)
    event["source"] = "aws.autoscaling"

    result = read(event)

    assert isinstance(result, Ignored)
    assert "ec2.amazonaws.com" in result.reason


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        (register_image_event("snap-0123"), "not a valid image id"),
        (cloudtrail_event("RegisterImage", request={"name": "x"}, response=None), "names no image id"),
        (cloudtrail_event("CreateLaunchTemplate", request={}, response={}), "names no launch template id"),
        (create_launch_template_event("web-template"), "not a valid launch template id"),
        (
            cloudtrail_event("CreateLaunchConfiguration", source="aws.autoscaling", request={}, response=None),
            "names no launch configuration id",
        ),
    ],
)
def test_events_without_a_usable_id_are_ignored_with_a_reason(event: dict[str, Any], fragment: str) -> None:
    result = read(event)

    assert isinstance(result, Ignored)
    assert fragment in result.reason


def test_other_autoscaling_calls_are_not_handled() -> None:
    event = cloudtrail_event("UpdateAutoScalingGroup", source="aws.autoscaling", request={}, response=None)

    result = read(event)

    assert isinstance(result, Ignored)
    assert "UpdateAutoScalingGroup is not one the launch watch handles" in result.reason


def test_foreign_account_source_event_is_ignored() -> None:
    event = create_launch_template_event(TEMPLATE_ID, account="999999999999")

    result = read(event)

    assert isinstance(result, Ignored)
    assert "999999999999" in result.reason

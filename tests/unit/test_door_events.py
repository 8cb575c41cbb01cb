"""Reading the CloudTrail calls that create or change an IMDS door outside EC2 instances (shapes from the services'
API references: camelCase request parameters; EMR's cluster id in RunJobFlow's response)."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.events import (
    ACCOUNT,
    REGION,
    create_beanstalk_environment_event,
    create_capacity_provider_event,
    create_lightsail_instances_event,
    create_nodegroup_event,
    create_notebook_event,
    door_event,
    lightsail_metadata_event,
    run_job_flow_event,
    update_compute_environment_event,
)
from imds_enforcer.domain.door_events import DOOR_EVENT_NAMES, DOOR_EVENTS, DoorTrigger
from imds_enforcer.domain.events import Ignored, read_launch_event

SERVICE_PATH = "/imds-enforcer/"


def read(event: dict[str, Any]) -> DoorTrigger | Ignored:
    result = read_launch_event(event, account=ACCOUNT, region=REGION, service_role_path=SERVICE_PATH)
    assert isinstance(result, DoorTrigger | Ignored)
    return result


@pytest.mark.parametrize(
    ("event", "resource_type", "ids"),
    [
        (create_notebook_event("research"), "sagemaker_notebook", ("research",)),
        (create_lightsail_instances_event(["blog-1", "blog-2"]), "lightsail_instance", ("blog-1", "blog-2")),
        (lightsail_metadata_event("blog-1"), "lightsail_instance", ("blog-1",)),
        (create_beanstalk_environment_event("shop", "shop-prod"), "elastic_beanstalk_environment", ("shop-prod",)),
        (update_compute_environment_event("gpu-jobs"), "batch_compute_environment", ("gpu-jobs",)),
        (create_nodegroup_event("prod", "workers"), "eks_nodegroup", ("prod/workers",)),
        (create_capacity_provider_event("ec2-spot"), "ecs_capacity_provider", ("ec2-spot",)),
        (run_job_flow_event("j-2AXXXXXXGAPLF"), "emr_cluster", ("j-2AXXXXXXGAPLF",)),
    ],
)
def test_each_door_call_names_its_resources(event: dict[str, Any], resource_type: str, ids: tuple[str, ...]) -> None:
    trigger = read(event)

    assert isinstance(trigger, DoorTrigger)
    assert (trigger.resource_type, trigger.resource_ids) == (resource_type, ids)
    assert trigger.event_id == event["id"]


def test_a_lightsail_change_that_omits_http_tokens_is_checked_too() -> None:
    # Lightsail resets an omitted httpTokens to optional: the call is a regression whatever it asked for.
    trigger = read(lightsail_metadata_event("blog-1", tokens=None))
    assert isinstance(trigger, DoorTrigger)


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (create_notebook_event("research", error_code="ValidationException"), "failed with ValidationException"),
        (create_notebook_event("research", caller_role="Enforcer", caller_role_path=SERVICE_PATH), "by this service"),
        (create_notebook_event("research", account="999988887777"), "from account 999988887777"),
        (
            door_event("sagemaker", "DeleteNotebookInstance", request={"notebookInstanceName": "x"}),
            "not one the launch",
        ),
        (door_event("eks", "CreateNodegroup", request={"clusterName": "prod"}), "names no eks nodegroup"),
        (door_event("lightsail", "CreateInstances", request={"instanceNames": []}), "names no lightsail instance"),
    ],
)
def test_calls_that_change_nothing_of_ours_are_ignored_with_a_reason(event: dict[str, Any], words: str) -> None:
    result = read(event)
    assert isinstance(result, Ignored)
    assert words in result.reason


def test_a_door_call_from_the_wrong_event_source_is_ignored() -> None:
    event = door_event("emr", "RunJobFlow", response={"jobFlowId": "j-1"})
    event["detail"]["eventSource"] = "emr.amazonaws.com"

    result = read(event)

    assert isinstance(result, Ignored)
    assert "not elasticmapreduce.amazonaws.com" in result.reason


def test_the_pattern_lists_every_call_the_reader_understands() -> None:
    assert sorted({name for calls in DOOR_EVENTS.values() for name in calls}) == DOOR_EVENT_NAMES
    assert len(DOOR_EVENT_NAMES) == 14

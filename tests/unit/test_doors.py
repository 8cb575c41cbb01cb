"""The IMDS doors outside EC2 instances, decided without AWS: every verdict of every door type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imds_enforcer.domain.doors import (
    BATCH_COMPUTE_ENVIRONMENT,
    BEANSTALK_ENVIRONMENT,
    DOOR_TYPES,
    EKS_NODEGROUP,
    EMR_CLUSTER,
    LIGHTSAIL_INSTANCE,
    SAGEMAKER_NOTEBOOK,
    EnvironmentFacts,
    LaunchDoor,
    LightsailFacts,
    LightsailPlan,
    NotebookFacts,
    NotebookPlan,
    batch_default_source,
    beanstalk_finding,
    eks_generated_source,
    emr_source,
    enforced_lightsail_finding,
    enforced_notebook_finding,
    launch_configuration_source,
    launch_door_decision,
    lightsail_decision,
    notebook_decision,
    tag_map,
    template_source,
)
from imds_enforcer.domain.report import RESOURCE_TYPES, Action, Finding
from imds_enforcer.domain.settings import EnforcementMode, Settings

FLAG = Settings()
FIX = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_SAGEMAKER_NOTEBOOKS=True, FIX_LIGHTSAIL_INSTANCES=True)
FIX_WITHOUT_OPT_INS = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX)
EXEMPT = {"imdsv2-exempt": "vendor image (CHG-7)"}


def test_every_door_is_a_resource_type_of_the_report_schema() -> None:
    assert set(DOOR_TYPES) <= set(RESOURCE_TYPES)
    assert len(set(DOOR_TYPES)) == 7


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"a": "1"}, {"a": "1"}),
        ([{"Key": "a", "Value": "1"}], {"a": "1"}),
        ([{"key": "a", "value": "1"}, {"key": "b"}], {"a": "1", "b": ""}),
        (None, {}),
    ],
)
def test_tags_read_the_same_whichever_way_a_service_spells_them(tags: Any, expected: dict[str, str]) -> None:
    assert tag_map(tags) == expected


# --- SageMaker notebook instances ----------------------------------------------------------------------------


def _notebook(
    status: str = "InService", version: str | None = "1", tags: dict[str, str] | None = None
) -> NotebookFacts:
    item: dict[str, Any] = {
        "NotebookInstanceName": "research",
        "NotebookInstanceArn": "arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/research",
        "NotebookInstanceStatus": status,
    }
    if version is not None:
        item["InstanceMetadataServiceConfiguration"] = {"MinimumInstanceMetadataServiceVersion": version}
    return NotebookFacts.from_api(item, tags)


def test_a_notebook_that_requires_imdsv2_has_nothing_to_say() -> None:
    assert notebook_decision(_notebook(version="2"), FIX) is None


@pytest.mark.parametrize("version", ["1", None])
def test_a_notebook_at_version_1_or_unset_is_flagged_in_flag_mode(version: str | None) -> None:
    finding = notebook_decision(_notebook(version=version), FLAG)

    assert isinstance(finding, Finding)
    assert (finding.resource_type, finding.resource_id, finding.action) == (
        SAGEMAKER_NOTEBOOK,
        "research",
        Action.FLAGGED,
    )
    assert "set it to 2" in finding.reason
    assert "(flag mode, left unchanged)" in finding.reason
    assert finding.details["minimum_imds_version"] == (version or "not set (IMDSv1)")


def test_fix_mode_without_the_opt_in_flags_and_says_which_setting() -> None:
    finding = notebook_decision(_notebook(status="Stopped"), FIX_WITHOUT_OPT_INS)
    assert isinstance(finding, Finding)
    assert "FIX_SAGEMAKER_NOTEBOOKS is off" in finding.reason


@pytest.mark.parametrize("status", ["Stopped", "Failed"])
def test_a_stopped_or_failed_notebook_is_fixed_on_opt_in(status: str) -> None:
    notebook = _notebook(status=status)
    assert notebook_decision(notebook, FIX) == NotebookPlan(notebook)

    enforced = enforced_notebook_finding(notebook)
    assert enforced.action is Action.ENFORCED
    assert enforced.details["minimum_imds_version"] == "2"
    assert enforced.details["previous_minimum_imds_version"] == "1"


@pytest.mark.parametrize("status", ["InService", "Pending", "Updating", "Stopping"])
def test_a_running_notebook_is_reported_not_changed_because_sagemaker_refuses(status: str) -> None:
    finding = notebook_decision(_notebook(status=status), FIX)

    assert isinstance(finding, Finding)
    assert finding.action is Action.FLAGGED
    assert f"it is {status}: SageMaker changes it only while it is stopped" in finding.reason


def test_an_exempt_notebook_is_reported_exempt_even_on_opt_in() -> None:
    finding = notebook_decision(_notebook(status="Stopped", tags=EXEMPT), FIX)
    assert isinstance(finding, Finding)
    assert finding.action is Action.EXEMPT
    assert "vendor image (CHG-7)" in finding.reason


def test_a_notebook_being_deleted_has_nothing_to_say() -> None:
    assert notebook_decision(_notebook(status="Deleting"), FIX) is None


# --- Lightsail instances -------------------------------------------------------------------------------------


def _lightsail(tokens: str | None = "optional", endpoint: str = "enabled", **extra: Any) -> LightsailFacts:
    options: dict[str, Any] = {"state": "applied", "httpEndpoint": endpoint, "httpPutResponseHopLimit": 1}
    if tokens is not None:
        options["httpTokens"] = tokens
    return LightsailFacts.from_api(
        {
            "name": "blog-1",
            "arn": "arn:aws:lightsail:us-east-1:123456789012:Instance/0c2a",
            "state": {"name": extra.get("state", "running")},
            "blueprintId": "wordpress",
            "tags": extra.get("tags", []),
            "metadataOptions": options,
        }
    )


@pytest.mark.parametrize(("tokens", "endpoint"), [("required", "enabled"), ("optional", "disabled")])
def test_a_lightsail_instance_that_refuses_imdsv1_has_nothing_to_say(tokens: str, endpoint: str) -> None:
    assert lightsail_decision(_lightsail(tokens, endpoint), FIX) is None


def test_an_optional_lightsail_instance_is_flagged_then_fixed_on_opt_in() -> None:
    flagged = lightsail_decision(_lightsail(), FLAG)
    assert isinstance(flagged, Finding)
    assert (flagged.resource_type, flagged.resource_id, flagged.action) == (
        LIGHTSAIL_INSTANCE,
        "blog-1",
        Action.FLAGGED,
    )
    assert "httpTokens=required" in flagged.reason

    instance = _lightsail()
    assert lightsail_decision(instance, FIX) == LightsailPlan(instance)
    enforced = enforced_lightsail_finding(instance, "Started")
    assert (enforced.action, enforced.details["http_tokens"], enforced.details["operation_status"]) == (
        Action.ENFORCED,
        "required",
        "Started",
    )


def test_a_lightsail_instance_with_the_exemption_tag_is_exempt() -> None:
    finding = lightsail_decision(_lightsail(tags=[{"key": "imdsv2-exempt", "value": "legacy plugin"}]), FIX)
    assert isinstance(finding, Finding)
    assert finding.action is Action.EXEMPT


# --- Elastic Beanstalk environments --------------------------------------------------------------------------


def _environment(value: str | None, status: str = "Ready") -> EnvironmentFacts:
    options = [{"Namespace": "aws:elasticbeanstalk:environment", "OptionName": "EnvironmentType", "Value": "x"}]
    if value is not None:
        options.append(
            {"Namespace": "aws:autoscaling:launchconfiguration", "OptionName": "DisableIMDSv1", "Value": value}
        )
    return EnvironmentFacts.from_api(
        {"ApplicationName": "shop", "EnvironmentName": "shop-prod", "EnvironmentId": "e-1", "Status": status}, options
    )


@pytest.mark.parametrize("value", ["false", None])
def test_a_beanstalk_environment_allowing_imdsv1_is_flagged_with_the_exact_option(value: str | None) -> None:
    finding = beanstalk_finding(_environment(value))

    assert finding is not None
    assert (finding.resource_type, finding.resource_id, finding.action) == (
        BEANSTALK_ENVIRONMENT,
        "shop-prod",
        Action.FLAGGED,
    )
    assert (
        "--environment-name shop-prod --option-settings "
        "Namespace=aws:autoscaling:launchconfiguration,OptionName=DisableIMDSv1,Value=true" in finding.reason
    )
    assert "never changed here" in finding.reason
    assert finding.details["option_value"] == (value or "not set")


@pytest.mark.parametrize(("value", "status"), [("true", "Ready"), ("TRUE", "Ready"), ("false", "Terminated")])
def test_a_beanstalk_environment_without_imdsv1_or_gone_has_nothing_to_say(value: str, status: str) -> None:
    assert beanstalk_finding(_environment(value, status)) is None


# --- doors that launch from a template or a security configuration -------------------------------------------


DOOR = LaunchDoor(
    resource_type=BATCH_COMPUTE_ENVIRONMENT,
    resource_id="gpu-jobs",
    title="Batch compute environment gpu-jobs",
    details={"state": "ENABLED"},
)


def _version(tokens: str | None, number: int = 3) -> dict[str, Any]:
    data: dict[str, Any] = {"ImageId": "ami-1"}
    if tokens is not None:
        data["MetadataOptions"] = {"HttpTokens": tokens}
    return {
        "LaunchTemplateId": "lt-1",
        "LaunchTemplateName": "batch-workers",
        "VersionNumber": number,
        "LaunchTemplateData": data,
    }


def test_a_door_whose_template_version_accepts_imdsv1_is_flagged_naming_template_and_version() -> None:
    source = template_source(
        template_id="lt-1",
        template_name="batch-workers",
        requested_version="$Default",
        resolved=_version("optional"),
        fix="do X",
    )

    finding = launch_door_decision(DOOR, source, FIX)

    assert finding is not None
    assert finding.action is Action.FLAGGED  # never changed here, whatever the mode
    assert finding.reason == (
        "Batch compute environment gpu-jobs launches instances that accept IMDSv1: launch template "
        "batch-workers (lt-1), version $Default = 3 (HttpTokens optional); do X"
    )
    assert finding.details == {
        "state": "ENABLED",
        "launch_template_id": "lt-1",
        "launch_template_name": "batch-workers",
        "launch_template_version": "$Default",
        "resolved_version": "3",
        "http_tokens": "optional",
    }


def test_a_door_whose_template_requires_imdsv2_has_nothing_to_say() -> None:
    source = template_source(
        template_id="lt-1", template_name="", requested_version="3", resolved=_version("required"), fix="x"
    )
    assert launch_door_decision(DOOR, source, FLAG) is None


def test_a_template_version_without_metadata_options_counts_as_open() -> None:
    source = template_source(
        template_id="lt-1", template_name="", requested_version="3", resolved=_version(None), fix="x"
    )
    assert source.accepts_imdsv1
    assert source.setting == "HttpTokens not set"


def test_a_door_naming_a_template_that_does_not_exist_is_flagged() -> None:
    source = template_source(template_id="lt-gone", template_name="", requested_version="7", resolved=None, fix="x")
    finding = launch_door_decision(DOOR, source, FLAG)
    assert finding is not None
    assert "that version does not exist" in finding.reason


def test_an_exempt_door_is_exempt() -> None:
    door = LaunchDoor(resource_type=EKS_NODEGROUP, resource_id="prod/workers", title="node group", tags=EXEMPT)
    finding = launch_door_decision(door, eks_generated_source("eks-abc"), FLAG)
    assert finding is not None
    assert finding.action is Action.EXEMPT


@pytest.mark.parametrize(
    ("image_types", "open_"),
    [([], True), (["ECS_AL2"], True), (["ECS_AL2023"], False), (["ECS_AL2023", "ECS_AL2_NVIDIA"], True)],
)
def test_batch_without_a_template_depends_on_its_image_type(image_types: list[str], open_: bool) -> None:
    source = batch_default_source(image_types)
    assert source.accepts_imdsv1 is open_
    assert "no launch template" in source.label


def test_an_eks_node_group_whose_generated_template_cannot_be_read_is_flagged_on_eks_default() -> None:
    source = eks_generated_source("eks-workers-1a2b")
    assert source.accepts_imdsv1
    assert source.setting == "EKS's default: HttpTokens optional, hop limit 2"


@pytest.mark.parametrize(
    ("name", "configuration", "open_"),
    [
        (None, None, True),
        ("sc-v1", {"InstanceMetadataServiceConfiguration": {"MinimumInstanceMetadataServiceVersion": 1}}, True),
        ("sc-unset", {"EncryptionConfiguration": {}}, True),
        ("sc-v2", {"InstanceMetadataServiceConfiguration": {"MinimumInstanceMetadataServiceVersion": 2}}, False),
        (
            "sc-v2-json",
            json.dumps({"InstanceMetadataServiceConfiguration": {"MinimumInstanceMetadataServiceVersion": 2}}),
            False,
        ),
        ("sc-broken", "{not json", True),
    ],
)
def test_emr_reads_its_security_configuration(name: str | None, configuration: Any, open_: bool) -> None:
    source = emr_source(name, configuration)
    assert source.accepts_imdsv1 is open_
    door = LaunchDoor(resource_type=EMR_CLUSTER, resource_id="j-1", title="EMR cluster etl (j-1)")
    finding = launch_door_decision(door, source, FIX)
    assert (finding is not None) is open_
    if finding is not None:
        assert "security configuration" in finding.reason
        assert "a running cluster keeps the configuration it launched with" in finding.reason


def test_a_launch_configuration_source_says_it_cannot_change() -> None:
    source = launch_configuration_source("legacy-lc", {"HttpTokens": "optional"}, "fix the group")
    assert source.accepts_imdsv1
    assert source.fix.startswith("move its Auto Scaling group to a launch template")

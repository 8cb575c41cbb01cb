"""The IMDS doors outside EC2 instances under moto: real boto3 calls build them, the real checks, gate and launch
watch run against them, and the tests read back the resources and the reports. (moto has no Lightsail: the emulator
adds one, and tests/integration/test_lightsail_stubber.py checks the adapter against the real service model.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from emulator import doors as build
from emulator.events import (
    create_notebook_event,
    lightsail_metadata_event,
    run_job_flow_event,
)
from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import EnforcementMode, Settings
from imds_enforcer.handlers.launch_watch import handler as launch_watch
from imds_enforcer.handlers.usage_gate import handler as usage_gate
from imds_enforcer.workflows import door_sweep
from imds_enforcer.workflows.launch_source_sweep import SourceOutcome
from tests.support.aws import SCHEDULED, ReportInbox
from tests.support.context import FakeLambdaContext
from tests.support.faults import Fault, count_calls, inject, json_error

pytestmark = pytest.mark.usefixtures("aws")

FLAG = Settings()
FIX = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_SAGEMAKER_NOTEBOOKS=True, FIX_LIGHTSAIL_INSTANCES=True)
FIX_WITHOUT_OPT_INS = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX)
EXEMPT = {"imdsv2-exempt": "approved exception (CHG-12)"}


def by_id(outcome: SourceOutcome) -> dict[str, Finding]:
    assert not outcome.unexpected_errors
    return {finding.resource_id: finding for finding in outcome.findings}


def notebook_version(name: str) -> str:
    described = boto3.client("sagemaker").describe_notebook_instance(NotebookInstanceName=name)
    version: str = described["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"]
    return version


def lightsail_options(name: str) -> dict[str, Any]:
    options: dict[str, Any] = boto3.client("lightsail").get_instance(instanceName=name)["instance"]["metadataOptions"]
    return options


# --- SageMaker notebook instances ----------------------------------------------------------------------------


def test_notebooks_are_flagged_in_flag_mode_and_left_as_they_are() -> None:
    build.create_notebook("running-v1", version="1")
    build.create_notebook("stopped-unset", version=None, stopped=True)
    build.create_notebook("already-v2", version="2")

    found = by_id(door_sweep.sweep_sagemaker_notebooks(FLAG))

    assert {name: f.action for name, f in found.items()} == {
        "running-v1": Action.FLAGGED,
        "stopped-unset": Action.FLAGGED,
    }
    assert notebook_version("stopped-unset") == "1"  # SageMaker's create default, left alone


def test_on_opt_in_a_stopped_notebook_is_fixed_and_a_running_one_reported() -> None:
    build.create_notebook("running-v1", version="1")
    build.create_notebook("stopped-v1", version="1", stopped=True)
    build.create_notebook("stopped-exempt", version="1", stopped=True, tags=EXEMPT)

    found = by_id(door_sweep.sweep_sagemaker_notebooks(FIX))

    assert found["stopped-v1"].action is Action.ENFORCED
    assert notebook_version("stopped-v1") == "2"
    assert found["running-v1"].action is Action.FLAGGED
    assert "it is InService" in found["running-v1"].reason
    assert notebook_version("running-v1") == "1"
    assert found["stopped-exempt"].action is Action.EXEMPT
    assert notebook_version("stopped-exempt") == "1"


def test_fix_mode_without_the_opt_in_changes_no_notebook() -> None:
    build.create_notebook("stopped-v1", version="1", stopped=True)

    found = by_id(door_sweep.sweep_sagemaker_notebooks(FIX_WITHOUT_OPT_INS))

    assert found["stopped-v1"].action is Action.FLAGGED
    assert "FIX_SAGEMAKER_NOTEBOOKS is off" in found["stopped-v1"].reason
    assert notebook_version("stopped-v1") == "1"


def test_a_notebook_started_between_the_check_and_the_update_is_refused_by_sagemaker_and_reported() -> None:
    build.create_notebook("a-started-meanwhile", version="1", stopped=True)
    build.create_notebook("b-still-stopped", version="1", stopped=True)
    sagemaker = clients.sagemaker()

    def someone_starts_it(request: Any, **_: Any) -> None:
        # Just before our update reaches SageMaker, a person starts the first notebook.
        if b"a-started-meanwhile" in (request.body or b""):
            boto3.client("sagemaker").start_notebook_instance(NotebookInstanceName="a-started-meanwhile")

    sagemaker.meta.events.register_first("before-send.sagemaker.UpdateNotebookInstance", someone_starts_it)

    outcome = door_sweep.sweep_sagemaker_notebooks(FIX)

    found = by_id(outcome)  # a refusal is expected: it describes the notebook, not a fault of ours
    refused = found["a-started-meanwhile"]
    assert (refused.action, refused.error_code) == (Action.FAILED, "ValidationException")
    assert "Status (InService) not in ([Stopped, Failed])" in refused.reason
    assert notebook_version("a-started-meanwhile") == "1"
    assert found["b-still-stopped"].action is Action.ENFORCED
    assert notebook_version("b-still-stopped") == "2"


# --- Lightsail instances -------------------------------------------------------------------------------------


def test_lightsail_instances_are_flagged_in_flag_mode() -> None:
    build.create_lightsail_instance("blog-1")

    found = by_id(door_sweep.sweep_lightsail_instances(FLAG))

    assert found["blog-1"].action is Action.FLAGGED
    assert lightsail_options("blog-1")["httpTokens"] == "optional"


def test_on_opt_in_lightsail_instances_require_imdsv2_and_keep_their_other_options() -> None:
    build.create_lightsail_instance("blog-1")
    build.create_lightsail_instance("blog-exempt", tags=EXEMPT)
    boto3.client("lightsail").update_instance_metadata_options(
        instanceName="blog-1", httpTokens="optional", httpPutResponseHopLimit=2
    )

    found = by_id(door_sweep.sweep_lightsail_instances(FIX))

    assert found["blog-1"].action is Action.ENFORCED
    assert lightsail_options("blog-1") | {"state": None} == {
        "state": None,
        "httpTokens": "required",
        "httpEndpoint": "enabled",
        "httpPutResponseHopLimit": 2,  # not sent, so kept (httpTokens, omitted, would have reset to optional)
        "httpProtocolIpv6": "disabled",
    }
    assert found["blog-exempt"].action is Action.EXEMPT
    assert lightsail_options("blog-exempt")["httpTokens"] == "optional"


def test_a_lightsail_refusal_is_reported_on_its_instance_and_the_others_go_on() -> None:
    build.create_lightsail_instance("a-old-blueprint")
    build.create_lightsail_instance("b-blog")
    refusal = json_error("InvalidInputException", "IMDSv2 is not supported for this blueprint")
    inject(clients.lightsail(), "UpdateInstanceMetadataOptions", Fault(refusal, only_for="a-old-blueprint"))

    found = by_id(door_sweep.sweep_lightsail_instances(FIX))

    assert (found["a-old-blueprint"].action, found["a-old-blueprint"].error_code) == (
        Action.FAILED,
        "InvalidInputException",
    )
    assert lightsail_options("a-old-blueprint")["httpTokens"] == "optional"
    assert found["b-blog"].action is Action.ENFORCED


# --- Elastic Beanstalk environments --------------------------------------------------------------------------


def test_a_beanstalk_environment_allowing_imdsv1_is_flagged_and_never_updated_even_with_every_fix_on() -> None:
    build.create_beanstalk_environment("shop", "shop-prod", disable_imdsv1="false")
    build.create_beanstalk_environment("shop", "shop-next", disable_imdsv1="true")
    build.create_beanstalk_environment("shop", "shop-dev", disable_imdsv1=None)
    calls = count_calls(clients.elasticbeanstalk())

    everything = Settings(
        ENFORCEMENT_MODE=EnforcementMode.FIX,
        FIX_LAUNCH_TEMPLATES=True,
        FIX_IMAGES=True,
        FIX_SAGEMAKER_NOTEBOOKS=True,
        FIX_LIGHTSAIL_INSTANCES=True,
    )
    found = by_id(door_sweep.sweep_beanstalk_environments(everything))

    assert {name: f.action for name, f in found.items()} == {"shop-prod": Action.FLAGGED, "shop-dev": Action.FLAGGED}
    assert "OptionName=DisableIMDSv1,Value=true" in found["shop-prod"].reason
    assert set(calls.take()) == {"DescribeEnvironments", "DescribeConfigurationSettings"}


# --- Batch, EKS, ECS, EMR: flagged by what they launch from --------------------------------------------------


def test_a_batch_environment_is_flagged_by_its_template_and_follows_the_template_fix() -> None:
    template = build.create_template("batch-workers", "optional")
    build.create_batch_environment("follows-default", template_id=template, version="$Default")
    build.create_batch_environment("pinned-to-1", template_id=template, version="1")
    build.create_batch_environment("no-template")
    build.create_batch_environment("al2023", image_types=["ECS_AL2023"])
    build.create_batch_environment("exempt", template_id=template, tags=EXEMPT)

    before = by_id(door_sweep.sweep_batch_compute_environments(FLAG))

    assert {name: f.action for name, f in before.items()} == {
        "follows-default": Action.FLAGGED,
        "pinned-to-1": Action.FLAGGED,
        "no-template": Action.FLAGGED,
        "exempt": Action.EXEMPT,
    }
    assert f"launch template batch-workers ({template}), version $Default = 1" in before["follows-default"].reason
    assert "Batch's image type ECS_AL2 (Batch's default)" in before["no-template"].reason

    # When the template check fixes the account's own template (a new default version), the environment that
    # follows $Default is closed; the one pinned to version 1 is still open and says so.
    fix_templates = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_LAUNCH_TEMPLATES=True)
    from imds_enforcer.workflows import launch_source_sweep

    launch_source_sweep.sweep_launch_templates(fix_templates)
    after = by_id(door_sweep.sweep_batch_compute_environments(fix_templates))

    assert "follows-default" not in after
    assert "version 1 (HttpTokens optional)" in after["pinned-to-1"].reason


def test_an_eks_node_group_is_flagged_by_its_template_or_by_the_one_eks_generates() -> None:
    open_template = build.create_template("eks-open", "optional")
    closed_template = build.create_template("eks-closed", "required")
    build.create_eks_nodegroup("prod", "open", template_id=open_template)
    build.create_eks_nodegroup("prod", "closed", template_id=closed_template)
    build.create_eks_nodegroup("prod", "eks-default")

    found = by_id(door_sweep.sweep_eks_nodegroups(FLAG))

    assert set(found) == {"prod/open", "prod/eks-default"}
    assert f"launch template eks-open ({open_template}), version 1" in found["prod/open"].reason
    assert "UpdateNodegroupVersion" in found["prod/open"].reason
    assert "the launch template EKS generates" in found["prod/eks-default"].reason


def test_an_eks_node_group_without_a_template_is_read_through_its_auto_scaling_group() -> None:
    build.create_eks_nodegroup("prod", "generated")
    group = boto3.client("eks").describe_nodegroup(clusterName="prod", nodegroupName="generated")["nodegroup"][
        "resources"
    ]["autoScalingGroups"][0]["name"]
    # moto creates no group for the node group: build the one EKS would have, from its generated template.
    eks_template = build.create_template(f"eks-{group}", "required")
    subnet = boto3.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=group,
        MinSize=0,
        MaxSize=1,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
        LaunchTemplate={"LaunchTemplateId": eks_template, "Version": "1"},
    )

    assert by_id(door_sweep.sweep_eks_nodegroups(FLAG)) == {}


def test_an_ecs_capacity_provider_is_flagged_by_its_groups_template_or_launch_configuration() -> None:
    no_options = build.create_template("ecs-no-options", None)
    required = build.create_template("ecs-required", "required")
    build.create_ecs_capacity_provider("cp-template", template_id=no_options)
    build.create_ecs_capacity_provider("cp-required", template_id=required)
    build.create_ecs_capacity_provider("cp-lc", launch_configuration="ecs-legacy-lc")

    found = by_id(door_sweep.sweep_ecs_capacity_providers(FLAG))

    assert set(found) == {"cp-template", "cp-lc"}
    assert "(HttpTokens not set)" in found["cp-template"].reason
    assert found["cp-template"].details["auto_scaling_group"] == "cp-template-asg"
    assert "launch configuration ecs-legacy-lc" in found["cp-lc"].reason


def test_an_emr_cluster_is_flagged_by_its_security_configuration() -> None:
    open_cluster = build.create_emr_cluster("etl-v1", security_configuration="sc-v1", minimum_version=1)
    closed_cluster = build.create_emr_cluster("etl-v2", security_configuration="sc-v2", minimum_version=2)
    bare_cluster = build.create_emr_cluster("adhoc")
    gone = build.create_emr_cluster("old", security_configuration="sc-old", minimum_version=1)
    boto3.client("emr").terminate_job_flows(JobFlowIds=[gone])

    found = by_id(door_sweep.sweep_emr_clusters(FLAG))

    assert set(found) == {open_cluster, bare_cluster}
    assert closed_cluster not in found
    assert "security configuration sc-v1 (MinimumInstanceMetadataServiceVersion 1)" in found[open_cluster].reason
    assert "no security configuration" in found[bare_cluster].reason
    assert found[open_cluster].details["release_label"] == "emr-6.15.0"


# --- every door in the gate, and failures ---------------------------------------------------------------------


def test_the_gate_reports_one_finding_for_each_seeded_door(inbox: ReportInbox) -> None:
    doors = build.seed_doors()

    usage_gate(SCHEDULED, FakeLambdaContext())

    [message] = inbox.drain()
    found = {(f["resource_type"], f["resource_id"]): f["action"] for f in message.report["findings"]}
    for resource_type, ids in doors.by_type.items():
        for resource_id in ids:
            assert found.get((resource_type, resource_id)) == "flagged", (resource_type, resource_id)


@pytest.mark.parametrize(
    ("check", "client", "operation", "code", "expected"),
    [
        (
            door_sweep.sweep_sagemaker_notebooks,
            clients.sagemaker,
            "ListNotebookInstances",
            "AccessDeniedException",
            False,
        ),
        # Lightsail's own answer for an account it is still setting up: expected (and not retried, unlike throttling).
        (
            door_sweep.sweep_lightsail_instances,
            clients.lightsail,
            "GetInstances",
            "AccountSetupInProgressException",
            True,
        ),
        (door_sweep.sweep_emr_clusters, clients.emr, "ListClusters", "AccessDeniedException", False),
    ],
)
def test_a_listing_that_fails_is_one_failed_finding_and_an_unexpected_code_is_collected(
    check: Callable[[Settings], SourceOutcome], client: Callable[[], Any], operation: str, code: str, expected: bool
) -> None:
    inject(client(), operation, Fault(json_error(code, "injected", 400)))

    outcome = check(FLAG)

    [finding] = outcome.findings
    assert (finding.resource_id, finding.action, finding.error_code) == ("*", Action.FAILED, code)
    assert bool(outcome.unexpected_errors) is not expected


def test_the_gate_publishes_every_door_then_raises_for_an_unexpected_failure(inbox: ReportInbox) -> None:
    build.create_notebook("research", version="1")
    build.create_lightsail_instance("blog-1")
    inject(clients.emr(), "ListClusters", Fault(json_error("AccessDeniedException", "no emr", 400)))

    with pytest.raises(UnexpectedAwsError, match="ListClusters"):
        usage_gate(SCHEDULED, FakeLambdaContext())

    [message] = inbox.drain()
    found = {(f["resource_type"], f["resource_id"]): f["action"] for f in message.report["findings"]}
    assert found[("sagemaker_notebook", "research")] == "flagged"
    assert found[("lightsail_instance", "blog-1")] == "flagged"
    assert found[("emr_cluster", "*")] == "failed"


# --- the launch watch ------------------------------------------------------------------------------------------


def test_the_launch_watch_checks_a_new_notebook_named_by_its_cloudtrail_event(inbox: ReportInbox) -> None:
    build.create_notebook("research", version="1")

    result = launch_watch(create_notebook_event("research"), FakeLambdaContext())

    assert result["status"] == "processed"
    [message] = inbox.drain()
    [finding] = message.report["findings"]
    assert (finding["resource_type"], finding["resource_id"], finding["action"]) == (
        "sagemaker_notebook",
        "research",
        "flagged",
    )


def test_in_fix_mode_the_launch_watch_undoes_a_lightsail_regression(
    inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    build.create_lightsail_instance("blog-1")
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("FIX_LIGHTSAIL_INSTANCES", "true")

    launch_watch(lightsail_metadata_event("blog-1", tokens=None), FakeLambdaContext())

    [message] = inbox.drain()
    assert [(f["resource_id"], f["action"]) for f in message.report["findings"]] == [("blog-1", "enforced")]
    assert lightsail_options("blog-1")["httpTokens"] == "required"


def test_the_launch_watch_ignores_the_services_own_door_changes(inbox: ReportInbox) -> None:
    build.create_lightsail_instance("blog-1")

    result = launch_watch(
        lightsail_metadata_event("blog-1", caller_role="UsageGate", caller_role_path="/imds-enforcer/"),
        FakeLambdaContext(),
    )

    assert result["status"] == "ignored"
    assert inbox.drain() == []


def test_a_new_emr_cluster_is_checked_by_the_id_in_runjobflows_response(inbox: ReportInbox) -> None:
    cluster = build.create_emr_cluster("etl", security_configuration="sc-v1", minimum_version=1)

    launch_watch(run_job_flow_event(cluster), FakeLambdaContext())

    [message] = inbox.drain()
    assert [(f["resource_type"], f["resource_id"]) for f in message.report["findings"]] == [("emr_cluster", cluster)]

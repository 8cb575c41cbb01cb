"""Launch templates, launch configurations and AMIs under moto: real boto3 calls build the account, the real checks,
the real launch watch and gate handlers run against it, and the tests read back templates, AMIs and reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
import pytest

from emulator.events import (
    create_launch_configuration_event,
    create_launch_template_event,
    create_launch_template_version_event,
    register_image_event,
)
from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import UnexpectedAwsError
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import EnforcementMode, Settings
from imds_enforcer.handlers.launch_watch import handler as launch_watch
from imds_enforcer.handlers.usage_gate import handler as usage_gate
from imds_enforcer.workflows import launch_source_sweep
from imds_enforcer.workflows.usage_gate import SOURCE_CHECKS
from tests.support.aws import SCHEDULED, ReportInbox, launch
from tests.support.context import FakeLambdaContext
from tests.support.faults import Fault, ec2_error, inject, timeout_error

pytestmark = pytest.mark.usefixtures("aws")

FLAG = Settings()
FIX_ALL = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_LAUNCH_TEMPLATES=True, FIX_IMAGES=True)
OPEN_OPTIONS = {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}


# --- building the account with real calls ----------------------------------------------------------------------


def create_template(
    name: str,
    options: Mapping[str, Any] | None = OPEN_OPTIONS,
    *,
    tags: Mapping[str, str] | None = None,
    instance_tags: Mapping[str, str] | None = None,
) -> str:
    data: dict[str, Any] = {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro", "UserData": "IyEvYmluL3NoCg=="}
    if options is not None:
        data["MetadataOptions"] = dict(options)
    if instance_tags:
        data["TagSpecifications"] = [{"ResourceType": "instance", "Tags": _tags(instance_tags)}]
    kwargs: dict[str, Any] = {"LaunchTemplateName": name, "LaunchTemplateData": data}
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "launch-template", "Tags": _tags(tags)}]
    template_id: str = boto3.client("ec2").create_launch_template(**kwargs)["LaunchTemplate"]["LaunchTemplateId"]
    return template_id


def add_version(template_id: str, data: Mapping[str, Any]) -> int:
    response = boto3.client("ec2").create_launch_template_version(
        LaunchTemplateId=template_id, SourceVersion="1", LaunchTemplateData=dict(data)
    )
    return int(response["LaunchTemplateVersion"]["VersionNumber"])


def create_group(name: str, **source: Any) -> None:
    subnet = boto3.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=0, MaxSize=1, DesiredCapacity=0, VPCZoneIdentifier=subnet, **source
    )


def create_launch_configuration(name: str, options: Mapping[str, Any] | None = None) -> None:
    kwargs: dict[str, Any] = {"LaunchConfigurationName": name, "ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}
    if options is not None:
        kwargs["MetadataOptions"] = dict(options)
    boto3.client("autoscaling").create_launch_configuration(**kwargs)


def create_own_image(name: str, tags: Mapping[str, str] | None = None) -> str:
    [instance_id] = launch()
    kwargs: dict[str, Any] = {"InstanceId": instance_id, "Name": name}
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "image", "Tags": _tags(tags)}]
    image_id: str = boto3.client("ec2").create_image(**kwargs)["ImageId"]
    return image_id


def template_state(template_id: str) -> tuple[int, int, dict[str, Any]]:
    """(default version, latest version, the default version's MetadataOptions)."""
    ec2 = boto3.client("ec2")
    [template] = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"]
    [default] = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, Versions=["$Default"])[
        "LaunchTemplateVersions"
    ]
    options: dict[str, Any] = default["LaunchTemplateData"].get("MetadataOptions", {})
    return template["DefaultVersionNumber"], template["LatestVersionNumber"], options


def version_data(template_id: str, version: str) -> dict[str, Any]:
    [item] = boto3.client("ec2").describe_launch_template_versions(LaunchTemplateId=template_id, Versions=[version])[
        "LaunchTemplateVersions"
    ]
    data: dict[str, Any] = item["LaunchTemplateData"]
    return data


def imds_support(image_id: str) -> str | None:
    [image] = boto3.client("ec2").describe_images(ImageIds=[image_id])["Images"]
    return image.get("ImdsSupport")


def by_resource(findings: list[Finding] | list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for finding in findings:
        key = finding.resource_id if isinstance(finding, Finding) else finding["resource_id"]
        assert key not in found, f"two findings for {key}"
        found[key] = finding
    return found


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


# --- launch templates ------------------------------------------------------------------------------------------


def test_flag_mode_names_versions_and_groups_and_changes_nothing() -> None:
    # Given an open template used by three groups ($Default by name, $Latest by id, a pinned number in a mixed
    # instances policy), a required one, and one with the metadata endpoint disabled
    web = create_template("web")
    add_version(web, {"ImageId": "ami-12c6146b", "MetadataOptions": OPEN_OPTIONS})
    create_group("web-default", LaunchTemplate={"LaunchTemplateName": "web", "Version": "$Default"})
    create_group("web-latest", LaunchTemplate={"LaunchTemplateId": web, "Version": "$Latest"})
    create_group(
        "web-mixed",
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": web, "Version": "1"},
                "Overrides": [{"InstanceType": "t3.small"}],
            }
        },
    )
    required = create_template("api", {"HttpTokens": "required"})
    no_imds = create_template("batch", {"HttpTokens": "optional", "HttpEndpoint": "disabled"})

    # When the templates are checked in flag mode
    findings = by_resource(launch_source_sweep.check_launch_templates(FLAG))

    # Then only the open one is flagged, naming its versions and every group, and nothing changed
    assert set(findings) == {web}
    finding = findings[web]
    assert (finding.resource_type, finding.action) == ("launch_template", Action.FLAGGED)
    assert "version 1 (default, HttpTokens optional)" in finding.reason
    assert "version 2 (latest, HttpTokens optional)" in finding.reason
    for group in ("web-default ($Default)", "web-latest ($Latest)", "web-mixed (version 1)"):
        assert group in finding.reason
    assert template_state(web)[:2] == (1, 2)
    assert template_state(required)[:2] == (1, 1)
    assert template_state(no_imds)[:2] == (1, 1)


def test_fix_mode_makes_a_required_default_and_keeps_the_other_options() -> None:
    # Given an open template with instance metadata tags on, used by a group through $Default
    options = {**OPEN_OPTIONS, "InstanceMetadataTags": "enabled"}
    web = create_template("web", options)
    create_group("web-asg", LaunchTemplate={"LaunchTemplateId": web})

    # When it is checked in fix mode with the template opt-in
    [finding] = launch_source_sweep.check_launch_templates(FIX_ALL)

    # Then version 2 is the new default: tokens required, every other option and field as they were
    assert finding.action is Action.ENFORCED
    assert "default version 1 -> new default version 2" in finding.reason
    assert "used by web-asg ($Default)" in finding.reason
    default, latest, new_options = template_state(web)
    assert (default, latest) == (2, 2)
    assert new_options == {**options, "HttpTokens": "required"}
    old, new = version_data(web, "1"), version_data(web, "2")
    assert {k: v for k, v in new.items() if k != "MetadataOptions"} == {
        k: v for k, v in old.items() if k != "MetadataOptions"
    }

    # And a second run has nothing to say (idempotent)
    assert launch_source_sweep.check_launch_templates(FIX_ALL) == []


def test_fix_keeps_latest_content_when_latest_differs_from_default() -> None:
    # Given an open default (v1) and a newer, different, open latest (v2) that a canary group launches
    web = create_template("web")
    add_version(web, {"ImageId": "ami-12c6146b", "InstanceType": "m5.large", "MetadataOptions": OPEN_OPTIONS})
    create_group("canary", LaunchTemplate={"LaunchTemplateId": web, "Version": "$Latest"})

    # When it is fixed
    [finding] = launch_source_sweep.check_launch_templates(FIX_ALL)

    # Then v3 (from v1) is the default and v4 (from v2) is the latest: both required, each with its own content
    assert finding.action is Action.ENFORCED
    assert template_state(web)[:2] == (3, 4)
    assert version_data(web, "3")["InstanceType"] == "t3.micro"
    assert version_data(web, "4")["InstanceType"] == "m5.large"
    assert version_data(web, "4")["MetadataOptions"]["HttpTokens"] == "required"


def test_container_template_gets_hop_limit_two_and_service_managed_is_untouched() -> None:
    # Given a self-managed Kubernetes node template (hop 1) and an EKS-managed one, both open
    nodes = create_template("k8s-nodes", instance_tags={"kubernetes.io/cluster/prod": "owned"})
    eks = create_template("eks-ng", {"HttpPutResponseHopLimit": 2}, tags={"eks:nodegroup-name": "ng-1"})

    # When they are checked in fix mode with the opt-in
    findings = by_resource(launch_source_sweep.check_launch_templates(FIX_ALL))

    # Then the node template requires tokens with hop limit 2; the EKS one is flagged, unchanged, and says why
    assert findings[nodes].action is Action.ENFORCED
    assert "hop limit raised to 2" in findings[nodes].reason
    assert template_state(nodes)[2]["HttpPutResponseHopLimit"] == 2
    assert findings[eks].action is Action.FLAGGED
    assert "managed by EKS (tag eks:nodegroup-name)" in findings[eks].reason
    assert template_state(eks)[:2] == (1, 1)


def test_exempt_template_is_reported_exempt_and_untouched() -> None:
    legacy = create_template("legacy", tags={"imdsv2-exempt": "vendor agent, ticket OPS-12"})

    [finding] = launch_source_sweep.check_launch_templates(FIX_ALL)

    assert (finding.resource_id, finding.action) == (legacy, Action.EXEMPT)
    assert "OPS-12" in finding.reason
    assert template_state(legacy)[:2] == (1, 1)


def test_a_failure_on_one_template_does_not_stop_the_others() -> None:
    # Given two open templates, and EC2 refusing a new version for the first one only
    broken = create_template("broken")
    fine = create_template("fine")
    fault = inject(
        clients.ec2(),
        "CreateLaunchTemplateVersion",
        Fault(ec2_error("LaunchTemplateVersionLimitExceeded", "too many versions"), only_for=broken),
    )

    # When both are fixed
    outcome = launch_source_sweep.sweep_launch_templates(FIX_ALL)

    # Then the first is a failed finding with its code, the second is enforced, and the code is an expected one
    findings = by_resource(outcome.findings)
    assert fault.injected >= 1
    assert findings[broken].action is Action.FAILED
    assert findings[broken].error_code == "LaunchTemplateVersionLimitExceeded"
    assert findings[fine].action is Action.ENFORCED
    assert template_state(broken)[:2] == (1, 1)
    assert outcome.unexpected_errors == []


@pytest.mark.usefixtures("retry_delays")
def test_an_error_a_retry_can_fix_is_collected_for_the_caller_to_raise() -> None:
    create_template("web")
    inject(clients.ec2(), "DescribeLaunchTemplates", Fault(ec2_error("InternalError", "try again", 500)))

    outcome = launch_source_sweep.sweep_launch_templates(FLAG)

    [finding] = outcome.findings
    assert (finding.resource_id, finding.action, finding.error_code) == ("*", Action.FAILED, "InternalError")
    assert outcome.unexpected_errors == ["DescribeLaunchTemplates *: InternalError"]


def test_a_refusal_is_reported_once_and_not_raised() -> None:
    # Given a policy (an SCP) that refuses the listing: a retry would be refused the same way
    create_template("web")
    inject(clients.ec2(), "DescribeLaunchTemplates", Fault(ec2_error("UnauthorizedOperation", "no", 403)))

    outcome = launch_source_sweep.sweep_launch_templates(FLAG)

    [finding] = outcome.findings
    assert (finding.resource_id, finding.action, finding.error_code) == ("*", Action.FAILED, "UnauthorizedOperation")
    assert outcome.unexpected_errors == []


@pytest.mark.usefixtures("retry_delays")
def test_a_read_timeout_leaves_the_sweep_as_a_failed_finding_naming_it() -> None:
    # Given a listing whose answer never arrives (botocore's ReadTimeoutError, not a ClientError)
    create_template("web")
    inject(clients.ec2(), "DescribeLaunchTemplates", Fault(timeout_error()))

    outcome = launch_source_sweep.sweep_launch_templates(FLAG)

    [finding] = outcome.findings
    assert (finding.action, finding.error_code) == (Action.FAILED, "ReadTimeoutError")
    assert outcome.unexpected_errors == ["DescribeLaunchTemplates *: ReadTimeoutError"]


# --- launch configurations -------------------------------------------------------------------------------------


def test_launch_configurations_are_flagged_with_their_groups() -> None:
    # Given an open configuration used by a group, an unused open one, a required one and one with IMDS off
    create_launch_configuration("legacy", {"HttpTokens": "optional", "HttpEndpoint": "enabled"})
    create_group("legacy-asg", LaunchConfigurationName="legacy")
    create_launch_configuration("spare")
    create_launch_configuration("good", {"HttpTokens": "required"})
    create_launch_configuration("dark", {"HttpTokens": "optional", "HttpEndpoint": "disabled"})

    # When they are checked (fix mode: they still cannot change)
    findings = by_resource(launch_source_sweep.check_launch_configurations(FIX_ALL))

    # Then the two open ones are flagged, with their groups (or none) and the way out
    assert set(findings) == {"legacy", "spare"}
    assert findings["legacy"].resource_type == "launch_configuration"
    assert "used by legacy-asg" in findings["legacy"].reason
    assert "not used by any group" in findings["spare"].reason
    assert all("move the groups to a launch template" in f.reason for f in findings.values())


# --- AMIs ------------------------------------------------------------------------------------------------------


def test_own_images_flagged_in_flag_mode_and_set_to_v2_with_the_opt_in() -> None:
    # Given two own AMIs made from an instance, one carrying the exemption tag
    golden = create_own_image("golden-2026-11")
    vendor = create_own_image("vendor-appliance", tags={"imdsv2-exempt": "vendor"})

    # When they are checked in flag mode, nothing changes
    flagged = by_resource(launch_source_sweep.check_images(FLAG))
    assert (flagged[golden].resource_type, flagged[golden].action) == ("image", Action.FLAGGED)
    assert flagged[vendor].action is Action.EXEMPT
    assert imds_support(golden) is None

    # When they are checked in fix mode with the image opt-in
    fixed = by_resource(launch_source_sweep.check_images(FIX_ALL))

    # Then the golden AMI requires IMDSv2 (and the finding warns it cannot be undone); the exempt one is left
    assert fixed[golden].action is Action.ENFORCED
    assert "cannot be undone" in fixed[golden].reason
    assert imds_support(golden) == "v2.0"
    assert imds_support(vendor) is None
    assert golden not in by_resource(launch_source_sweep.check_images(FIX_ALL))


def test_public_images_of_others_are_never_listed() -> None:
    # Given moto's catalogue of public AMIs owned by other accounts, and no AMI of our own
    # When the images are checked with every fix on
    # Then nothing is found (and so nothing could be modified)
    assert launch_source_sweep.check_images(FIX_ALL) == []
    assert launch_source_sweep.check_images(FIX_ALL, image_ids=["ami-12c6146b"]) == []


# --- through the real handlers ---------------------------------------------------------------------------------


def test_cloudtrail_template_event_through_the_launch_watch(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a new open template and fix mode with the template opt-in
    web = create_template("web")
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("FIX_LAUNCH_TEMPLATES", "true")

    # When its CreateLaunchTemplate event reaches the launch watch
    event = create_launch_template_event(web)
    result = launch_watch(event, lambda_context)

    # Then it is enforced, and the report (trigger launch) says so
    assert [f["action"] for f in result["findings"]] == ["enforced"]  # type: ignore[index]
    assert template_state(web)[2]["HttpTokens"] == "required"
    [message] = inbox.drain()
    assert message.report["trigger"] == "launch"
    assert message.report["source_event_id"] == event["id"]
    [finding] = message.report["findings"]
    assert (finding["resource_type"], finding["resource_id"]) == ("launch_template", web)

    # And a new open version (a person's CreateLaunchTemplateVersion) is caught the same way
    version = add_version(web, {"ImageId": "ami-12c6146b", "MetadataOptions": OPEN_OPTIONS})
    result = launch_watch(create_launch_template_version_event(web, version), lambda_context)
    assert [f["action"] for f in result["findings"]] == ["enforced"]  # type: ignore[index]
    assert version_data(web, "$Latest")["MetadataOptions"]["HttpTokens"] == "required"


def test_cloudtrail_image_and_launch_configuration_events_through_the_launch_watch(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given a new own AMI and a new open launch configuration, in flag mode
    image_id = create_own_image("golden")
    create_launch_configuration("legacy")

    # When their RegisterImage and CreateLaunchConfiguration events arrive
    image_result = launch_watch(register_image_event(image_id), lambda_context)
    config_result = launch_watch(create_launch_configuration_event("legacy"), lambda_context)

    # Then each is flagged in its own report, and nothing changed
    assert [(f["resource_type"], f["action"]) for f in image_result["findings"]] == [("image", "flagged")]  # type: ignore[index]
    assert [(f["resource_type"], f["action"]) for f in config_result["findings"]] == [  # type: ignore[index]
        ("launch_configuration", "flagged")
    ]
    assert imds_support(image_id) is None
    assert [m.report["findings"][0]["resource_type"] for m in inbox.drain()] == ["image", "launch_configuration"]


@pytest.mark.usefixtures("retry_delays")
def test_unexpected_error_on_a_source_event_is_reported_then_raised(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    web = create_template("web")
    inject(clients.ec2(), "DescribeLaunchTemplates", Fault(ec2_error("InternalError", "no", 500)))

    with pytest.raises(UnexpectedAwsError, match="InternalError"):
        launch_watch(create_launch_template_event(web), lambda_context)

    [message] = inbox.drain()
    assert message.report["findings"][0]["action"] == "failed"


def test_gate_report_contains_template_configuration_and_image_findings(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an open instance, template, launch configuration and own AMI
    [instance_id] = launch()
    web = create_template("web")
    create_launch_configuration("legacy")
    image_id = create_own_image("golden")

    # When the gate runs on schedule (flag mode)
    summary = usage_gate(SCHEDULED, lambda_context)

    # Then its one report holds the instance and every launch source, and no check was skipped
    [message] = inbox.drain()
    findings = by_resource(message.report["findings"])
    assert findings[web]["resource_type"] == "launch_template"
    assert findings["legacy"]["resource_type"] == "launch_configuration"
    assert findings[image_id]["resource_type"] == "image"
    assert findings[instance_id]["resource_type"] == "instance"
    assert message.report["totals"]["source_checks_skipped"] == 0
    assert summary["status"] == "processed"


class LowBudgetContext(FakeLambdaContext):
    def get_remaining_time_in_millis(self) -> int:
        return 10_000  # below the 60 s margin from the start


def test_gate_skips_the_source_checks_when_the_budget_is_low(inbox: ReportInbox) -> None:
    create_template("web")
    launch()

    usage_gate(SCHEDULED, LowBudgetContext())

    [message] = inbox.drain()
    assert {f["resource_type"] for f in message.report["findings"]} == {"instance"}
    # The three launch-source checks and the seven IMDS doors outside EC2 instances.
    assert message.report["totals"]["source_checks_skipped"] == len(SOURCE_CHECKS) == 10

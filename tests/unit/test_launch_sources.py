"""Where new instances come from, decided as pure functions: launch templates, launch configurations, AMIs.

Property tests over template facts and settings, the real payloads in ../shared/aws-samples/responses, and the
adapter's requests checked by botocore's Stubber against the service model (no moto).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from imds_enforcer.aws import clients
from imds_enforcer.domain.launch_sources import (
    CONTAINER_HOP_LIMIT,
    GroupUse,
    ImageFacts,
    ImagePlan,
    LaunchConfigurationFacts,
    LaunchTemplateFacts,
    TemplatePlan,
    TemplateVersion,
    configuration_users,
    enforced_template_finding,
    image_decision,
    launch_configuration_finding,
    managed_by,
    template_decision,
    template_users,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import EnforcementMode, Settings
from imds_enforcer.workflows import launch_source_sweep

FLAG = Settings()
FIX_ALL = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_LAUNCH_TEMPLATES=True, FIX_IMAGES=True)
FIX_NO_OPT_IN = Settings(ENFORCEMENT_MODE=EnforcementMode.FIX)


def response(samples_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((samples_dir / "responses" / name).read_text())
    return data


def sample_template(
    samples_dir: Path, name: str, **overrides: Any
) -> tuple[LaunchTemplateFacts, list[TemplateVersion]]:
    """The template a DescribeLaunchTemplateVersions sample belongs to (default and latest read from its versions)."""
    items = response(samples_dir, name)["LaunchTemplateVersions"]
    versions = [TemplateVersion.from_api(item) for item in items]
    default = next(item["VersionNumber"] for item in items if item["DefaultVersion"])
    template = LaunchTemplateFacts(
        template_id=items[0]["LaunchTemplateId"],
        name=items[0]["LaunchTemplateName"],
        default_version=default,
        latest_version=max(version.number for version in versions),
        created_by=overrides.pop("created_by", items[0]["CreatedBy"]),
        **overrides,
    )
    return template, versions


FOUR_VERSIONS = "ec2_describe-launch-template-versions_4-versions_no-metadataoptions.json"
EKS_MANAGED = "ec2_describe-launch-template-versions_eks-managed_metadataoptions-hop-limit-only.json"
NOT_FOUND = "ec2_describe-launch-template-versions_error-invalidlaunchtemplateid-notfound_placebo-envelope.json"


# --- the real payloads -----------------------------------------------------------------------------------------


def test_sample_template_without_metadata_options_is_flagged_naming_versions_and_groups(samples_dir: Path) -> None:
    # Given the real 4-version template (default v3, latest v4, no MetadataOptions anywhere), used by two groups
    template, versions = sample_template(samples_dir, FOUR_VERSIONS)
    users = [GroupUse("web-asg", "$Default"), GroupUse("canary-asg", "$Latest")]

    # When it is decided in flag mode
    decision = template_decision(template, versions, FLAG, users=users)

    # Then it is flagged, naming both open versions, what HttpTokens is, and the groups
    assert isinstance(decision, Finding)
    assert (decision.resource_type, decision.resource_id, decision.action) == (
        "launch_template",
        "lt-0877401c93c294001",
        Action.FLAGGED,
    )
    assert "version 3 (default, HttpTokens not set)" in decision.reason
    assert "version 4 (latest, HttpTokens not set)" in decision.reason
    assert "web-asg ($Default)" in decision.reason
    assert "canary-asg ($Latest)" in decision.reason
    assert "flag mode" in decision.reason
    assert decision.details["open_versions"] == "3,4"


def test_sample_template_fix_keeps_latest_content_for_latest_users(samples_dir: Path) -> None:
    # Given the same template, in fix mode with the template opt-in
    template, versions = sample_template(samples_dir, FOUR_VERSIONS)

    # When it is decided
    plan = template_decision(template, versions, FIX_ALL, users=[])

    # Then a required copy of the default (made default) comes first, then a required copy of the latest, each
    # with its own source's data: $Default and $Latest keep launching what they launched, with IMDSv2
    assert isinstance(plan, TemplatePlan)
    first, second = plan.new_versions
    assert (first.source.number, first.make_default) == (3, True)
    assert (second.source.number, second.make_default) == (4, False)
    assert first.launch_template_data()["SecurityGroupIds"] == ["sg-00cd07381bc482d51"]
    assert second.launch_template_data()["SecurityGroupIds"] == ["sg-02ec691909b2a4753"]
    assert first.launch_template_data()["MetadataOptions"] == {"HttpTokens": "required"}
    # And the finding names the old and new versions
    finding = enforced_template_finding(plan, [5, 6])
    assert finding.action is Action.ENFORCED
    assert "default version 3 -> new default version 5" in finding.reason
    assert "latest version 4 copied as version 6" in finding.reason
    assert finding.details["default_version"] == "5"


def test_fix_without_the_template_opt_in_only_flags(samples_dir: Path) -> None:
    template, versions = sample_template(samples_dir, FOUR_VERSIONS)

    decision = template_decision(template, versions, FIX_NO_OPT_IN, users=[])

    assert isinstance(decision, Finding)
    assert decision.action is Action.FLAGGED
    assert "FIX_LAUNCH_TEMPLATES is off" in decision.reason
    assert "not used by any Auto Scaling group" in decision.reason


def test_sample_eks_managed_template_is_flagged_and_never_changed(samples_dir: Path) -> None:
    # Given the real EKS node group template (MetadataOptions has only the hop limit; created by EKS's role)
    template, versions = sample_template(samples_dir, EKS_MANAGED, created_by="")

    # When it is decided with every fix turned on
    decision = template_decision(template, versions, FIX_ALL, users=[GroupUse("eks-ng-asg", "1")])

    # Then it is flagged, never planned, and the reason says who owns it and where to change it
    assert isinstance(decision, Finding)
    assert decision.action is Action.FLAGGED
    assert "AWSServiceRoleForAmazonEKSNodegroup" in decision.reason
    assert "never changed here" in decision.reason
    assert "eks-ng-asg (version 1)" in decision.reason
    assert decision.details["managed_by"].startswith("created by the service-linked role")


def test_stubbed_not_found_envelope_becomes_a_failed_finding(samples_dir: Path, stubbed_ec2: Stubber) -> None:
    # Given the real InvalidLaunchTemplateId.NotFound error for the template's versions
    envelope = response(samples_dir, NOT_FOUND)
    error = envelope["data"]["Error"]
    stubbed_ec2.add_response(
        "describe_launch_templates",
        {"LaunchTemplates": [_template_item("lt-0877401c93c294001", "test", 3, 4)]},
        {"LaunchTemplateIds": ["lt-0877401c93c294001"]},
    )
    stubbed_ec2.add_client_error(
        "describe_launch_template_versions",
        service_error_code=error["Code"],
        service_message=error["Message"],
        http_status_code=envelope["status_code"],
    )

    # When the launch watch's check looks at that template
    outcome = launch_source_sweep.sweep_launch_templates(FIX_ALL, template_ids=["lt-0877401c93c294001"])

    # Then it is one failed finding carrying the code, and an expected code (no Lambda retry for a deleted template)
    [finding] = outcome.findings
    assert (finding.action, finding.error_code) == (Action.FAILED, "InvalidLaunchTemplateId.NotFound")
    assert finding.resource_type == "launch_template"
    assert "DescribeLaunchTemplateVersions failed" in finding.reason
    assert outcome.unexpected_errors == []
    stubbed_ec2.assert_no_pending_responses()


def test_stubbed_fix_sends_requests_the_service_model_accepts(samples_dir: Path, stubbed_ec2: Stubber) -> None:
    # Given the real 4-version template, described as AWS answers, and no Auto Scaling groups
    versions = copy.deepcopy(response(samples_dir, FOUR_VERSIONS))
    versions.pop("ResponseMetadata")
    template_id = "lt-0877401c93c294001"
    stubbed_ec2.add_response(
        "describe_launch_templates",
        {"LaunchTemplates": [_template_item(template_id, "test", 3, 4)]},
        {"LaunchTemplateIds": [template_id]},
    )
    stubbed_ec2.add_response(
        "describe_launch_template_versions",
        versions,
        {"LaunchTemplateId": template_id, "Versions": ["$Default", "$Latest"], "MaxResults": 200},
    )
    # Then (expected below) each new version is the source's data plus HttpTokens required, from SourceVersion
    for source, new in ((3, 5), (4, 6)):
        data = next(v for v in versions["LaunchTemplateVersions"] if v["VersionNumber"] == source)["LaunchTemplateData"]
        stubbed_ec2.add_response(
            "create_launch_template_version",
            {"LaunchTemplateVersion": {"LaunchTemplateId": template_id, "VersionNumber": new}},
            {
                "LaunchTemplateId": template_id,
                "SourceVersion": str(source),
                "LaunchTemplateData": {**data, "MetadataOptions": {"HttpTokens": "required"}},
                "VersionDescription": f"imds-enforcer: HttpTokens required (copied from version {source})",
                "ClientToken": f"imds-enforcer-{template_id}-{source}",
            },
        )
    stubbed_ec2.add_response(
        "modify_launch_template",
        {"LaunchTemplate": {"LaunchTemplateId": template_id, "DefaultVersionNumber": 5}},
        {"LaunchTemplateId": template_id, "DefaultVersion": "5"},
    )

    # When the check runs in fix mode with the opt-in (groups come from an empty Auto Scaling stub)
    with Stubber(clients.autoscaling()) as autoscaling:
        autoscaling.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []}, {"MaxRecords": 100})
        findings = launch_source_sweep.check_launch_templates(FIX_ALL, template_ids=[template_id])

    # Then the template is enforced, and every call matched what the service model accepts
    [finding] = findings
    assert finding.action is Action.ENFORCED
    stubbed_ec2.assert_no_pending_responses()


def test_response_only_fields_are_left_to_source_version(stubbed_ec2: Stubber) -> None:
    # Given a version whose data holds response-only fields (MetadataOptions.State, IsPrimaryIpv6)
    from imds_enforcer.aws import ec2

    data = {
        "InstanceType": "t3.micro",
        "NetworkInterfaces": [{"DeviceIndex": 0, "Ipv6Addresses": [{"Ipv6Address": "::1", "IsPrimaryIpv6": True}]}],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
    }
    # Then only the fields the request shape takes unchanged are sent; SourceVersion copies the rest as they are
    stubbed_ec2.add_response(
        "create_launch_template_version",
        {"LaunchTemplateVersion": {"VersionNumber": 2}},
        {
            "LaunchTemplateId": "lt-0123456789abcdef0",
            "SourceVersion": "1",
            "LaunchTemplateData": {"InstanceType": "t3.micro", "MetadataOptions": data["MetadataOptions"]},
            "VersionDescription": "d",
            "ClientToken": "t",
        },
    )

    # When the adapter creates the version
    number = ec2.create_launch_template_version(
        "lt-0123456789abcdef0", source_version=1, data=data, description="d", client_token="t"
    )

    assert number == 2


def test_sample_images_with_and_without_imds_support(samples_dir: Path) -> None:
    # Given the real AL2023 AMI (ImdsSupport v2.0) and a real private AMI with no ImdsSupport key
    [al2023] = response(samples_dir, "ec2_describe-images_al2023_imdssupport-v2.0.json")["Images"]
    [private] = response(samples_dir, "ec2_describe-images_private-ami_no-imdssupport-key.json")["Images"]

    # Then the first needs nothing, the second is flagged in flag mode and planned with the image opt-in
    assert image_decision(ImageFacts.from_api(al2023), FIX_ALL) is None
    flagged = image_decision(ImageFacts.from_api(private), FLAG)
    assert isinstance(flagged, Finding)
    assert (flagged.resource_type, flagged.resource_id, flagged.action) == ("image", private["ImageId"], Action.FLAGGED)
    assert flagged.details["imds_support"] == "not set"
    assert isinstance(image_decision(ImageFacts.from_api(private), FIX_ALL), ImagePlan)
    no_opt_in = image_decision(ImageFacts.from_api(private), FIX_NO_OPT_IN)
    assert isinstance(no_opt_in, Finding)
    assert "FIX_IMAGES is off" in no_opt_in.reason


def test_exempt_image_is_never_planned(samples_dir: Path) -> None:
    [private] = response(samples_dir, "ec2_describe-images_private-ami_no-imdssupport-key.json")["Images"]
    item = {**private, "Tags": [{"Key": "imdsv2-exempt", "Value": "vendor appliance"}]}

    decision = image_decision(ImageFacts.from_api(item), FIX_ALL)

    assert isinstance(decision, Finding)
    assert decision.action is Action.EXEMPT
    assert "vendor appliance" in decision.reason


def test_sample_launch_configuration_with_endpoint_disabled_is_not_flagged(samples_dir: Path) -> None:
    # Given the real launch configuration whose metadata endpoint is disabled
    [config] = response(
        samples_dir, "autoscaling_describe-launch-configurations_httptokens-required_httpendpoint-disabled.json"
    )["LaunchConfigurations"]

    # Then it says nothing, and would say nothing with tokens optional either: IMDS is off, nothing to steal
    assert launch_configuration_finding(LaunchConfigurationFacts.from_api(config), ["asg"]) is None
    optional = {**config, "MetadataOptions": {**config["MetadataOptions"], "HttpTokens": "optional"}}
    assert launch_configuration_finding(LaunchConfigurationFacts.from_api(optional), ["asg"]) is None


# --- launch configurations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [None, {"HttpTokens": "optional"}, {"HttpEndpoint": "enabled"}])
def test_open_launch_configuration_is_flagged_with_its_groups_and_the_way_out(options: Any) -> None:
    config = LaunchConfigurationFacts.from_api({"LaunchConfigurationName": "legacy-lc", "MetadataOptions": options})

    finding = launch_configuration_finding(config, ["asg-a", "asg-b"])

    assert finding is not None
    assert (finding.resource_type, finding.resource_id, finding.action) == (
        "launch_configuration",
        "legacy-lc",
        Action.FLAGGED,
    )
    assert "used by asg-a, asg-b" in finding.reason
    assert "move the groups to a launch template" in finding.reason


def test_unused_launch_configuration_is_still_flagged() -> None:
    config = LaunchConfigurationFacts.from_api({"LaunchConfigurationName": "spare", "MetadataOptions": None})

    finding = launch_configuration_finding(config, [])

    assert finding is not None
    assert "not used by any group" in finding.reason


# --- who uses what, who owns what ------------------------------------------------------------------------------


def test_groups_are_mapped_by_id_name_and_mixed_instances_policy() -> None:
    groups = [
        {"AutoScalingGroupName": "by-id", "LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "$Latest"}},
        {"AutoScalingGroupName": "by-name", "LaunchTemplate": {"LaunchTemplateName": "web"}},
        {
            "AutoScalingGroupName": "mixed",
            "MixedInstancesPolicy": {
                "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": "web", "Version": "7"}}
            },
        },
        {"AutoScalingGroupName": "lc", "LaunchConfigurationName": "old-lc"},
    ]

    users = template_users(groups, {"web": "lt-1"})

    assert users == {
        "lt-1": [GroupUse("by-id", "$Latest"), GroupUse("by-name", "$Default"), GroupUse("mixed", "7")],
    }
    assert configuration_users(groups) == {"old-lc": ["lc"]}


def test_a_mixed_instances_override_launching_from_another_template_counts_as_a_use_of_it() -> None:
    # Given a group whose Mixed Instances Policy launches its Graviton types from a second template (an override)
    groups = [
        {
            "AutoScalingGroupName": "mixed",
            "MixedInstancesPolicy": {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": "lt-x86", "Version": "$Latest"},
                    "Overrides": [
                        {"InstanceType": "m5.large"},
                        {
                            "InstanceType": "m7g.large",
                            "LaunchTemplateSpecification": {"LaunchTemplateName": "arm", "Version": "3"},
                        },
                        {
                            "InstanceType": "c7g.large",
                            "LaunchTemplateSpecification": {"LaunchTemplateName": "arm", "Version": "3"},
                        },
                    ],
                }
            },
        }
    ]

    users = template_users(groups, {"arm": "lt-arm"})

    # Then both templates are used by the group (the override's once, however many types name it)
    assert users == {"lt-x86": [GroupUse("mixed", "$Latest")], "lt-arm": [GroupUse("mixed", "3")]}


@pytest.mark.parametrize(
    ("tags", "created_by", "owner"),
    [
        ({"aws:cloudformation:stack-name": "app"}, "arn:aws:iam::1:user/dev", None),
        ({"team": "web"}, "arn:aws:sts::1:assumed-role/Deployer/ci", None),
        ({"eks:nodegroup-name": "ng"}, "", "managed by EKS (tag eks:nodegroup-name)"),
        ({"aws:ecs:clusterName": "c"}, "", "managed by an AWS service (tag aws:ecs:clusterName)"),
        ({}, "arn:aws:sts::1:assumed-role/AWSServiceRoleForAmazonEKSNodegroup/EKS", "service-linked role"),
    ],
)
def test_who_manages_a_template(tags: dict[str, str], created_by: str, owner: str | None) -> None:
    template = LaunchTemplateFacts("lt-1", "t", 1, 1, tags=tags, created_by=created_by)

    found = managed_by(template)

    if owner is None:
        assert found is None
    else:
        assert owner in (found or "")


def test_a_template_managed_by_an_operator_is_managed() -> None:
    item = {
        "LaunchTemplateId": "lt-1",
        "DefaultVersionNumber": 1,
        "LatestVersionNumber": 1,
        "Operator": {"Managed": True, "Principal": "eks.amazonaws.com"},
    }

    assert managed_by(LaunchTemplateFacts.from_api(item)) == "managed by eks.amazonaws.com (Operator.Managed)"


# --- properties ------------------------------------------------------------------------------------------------

TAG_KEYS = st.sampled_from(
    [
        "Name",
        "team",
        "imdsv2-exempt",
        "eks:cluster-name",
        "eks:nodegroup-name",
        "aws:cloudformation:stack-name",
        "aws:autoscaling:groupName",
        "kubernetes.io/cluster/prod",
        "AmazonECSManaged",
    ]
)
metadata_options = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "HttpTokens": st.sampled_from(["optional", "required"]),
            "HttpEndpoint": st.sampled_from(["enabled", "disabled"]),
            "HttpPutResponseHopLimit": st.integers(min_value=1, max_value=64),
            "InstanceMetadataTags": st.sampled_from(["enabled", "disabled"]),
            "HttpProtocolIpv6": st.sampled_from(["enabled", "disabled"]),
        },
    ),
)
settings_strategy = st.builds(
    Settings,
    ENFORCEMENT_MODE=st.sampled_from(list(EnforcementMode)),
    FIX_LAUNCH_TEMPLATES=st.booleans(),
    FIX_IMAGES=st.booleans(),
)


@st.composite
def templates(draw: st.DrawFn) -> tuple[LaunchTemplateFacts, list[TemplateVersion]]:
    default = draw(st.integers(min_value=1, max_value=5))
    latest = draw(st.integers(min_value=default, max_value=6))
    numbers = sorted({default, latest})
    versions = []
    for number in numbers:
        data: dict[str, Any] = {"ImageId": "ami-12c6146b"}
        options = draw(metadata_options)
        if options is not None:
            data["MetadataOptions"] = options
        if draw(st.booleans()):
            data["TagSpecifications"] = [{"ResourceType": "instance", "Tags": [{"Key": draw(TAG_KEYS), "Value": "x"}]}]
        versions.append(TemplateVersion(number=number, data=data))
    tags = draw(st.dictionaries(TAG_KEYS, st.text(max_size=5), max_size=3))
    return LaunchTemplateFacts("lt-0123456789abcdef0", "web", default, latest, tags=tags), versions


@given(templates(), settings_strategy)
def test_never_changes_a_service_managed_or_exempt_template(
    template_and_versions: tuple[LaunchTemplateFacts, list[TemplateVersion]], settings: Settings
) -> None:
    template, versions = template_and_versions
    decision = template_decision(template, versions, settings, users=[])
    if settings.EXEMPT_TAG_KEY in template.tags or managed_by(template, versions) is not None:
        assert not isinstance(decision, TemplatePlan)


@given(templates(), settings_strategy)
def test_a_plan_requires_tokens_keeps_other_options_and_never_lowers_the_hop_limit(
    template_and_versions: tuple[LaunchTemplateFacts, list[TemplateVersion]], settings: Settings
) -> None:
    template, versions = template_and_versions
    decision = template_decision(template, versions, settings, users=[])
    if not isinstance(decision, TemplatePlan):
        return
    assert settings.fix
    assert settings.FIX_LAUNCH_TEMPLATES
    assert decision.new_versions, "a plan always creates at least one version"
    assert [new.make_default for new in decision.new_versions].count(True) <= 1
    for new in decision.new_versions:
        before = dict(new.source.data.get("MetadataOptions") or {})
        after = new.launch_template_data()["MetadataOptions"]
        assert after["HttpTokens"] == "required"
        for key in ("HttpEndpoint", "InstanceMetadataTags", "HttpProtocolIpv6"):
            assert after.get(key) == before.get(key)
        old_hop = before.get("HttpPutResponseHopLimit")
        new_hop = after.get("HttpPutResponseHopLimit")
        if old_hop is not None:
            assert new_hop is not None
            assert new_hop >= old_hop
        tags = {**new.source.instance_tags, **template.tags}
        if any(key in tags for key in ("eks:cluster-name", "AmazonECSManaged", "kubernetes.io/cluster/prod")):
            assert new_hop is not None
            assert new_hop >= CONTAINER_HOP_LIMIT
        # Everything but the metadata options is the source's own data
        assert {k: v for k, v in new.launch_template_data().items() if k != "MetadataOptions"} == {
            k: v for k, v in new.source.data.items() if k != "MetadataOptions"
        }


@given(templates(), settings_strategy)
def test_required_or_disabled_endpoint_templates_are_never_flagged(
    template_and_versions: tuple[LaunchTemplateFacts, list[TemplateVersion]], settings: Settings
) -> None:
    template, versions = template_and_versions
    closed = all(
        (version.data.get("MetadataOptions") or {}).get("HttpTokens") == "required"
        or (version.data.get("MetadataOptions") or {}).get("HttpEndpoint") == "disabled"
        for version in versions
    )
    decision = template_decision(template, versions, settings, users=[])
    assert (decision is None) == closed


# --- support ---------------------------------------------------------------------------------------------------


def _template_item(template_id: str, name: str, default: int, latest: int) -> dict[str, Any]:
    return {
        "LaunchTemplateId": template_id,
        "LaunchTemplateName": name,
        "DefaultVersionNumber": default,
        "LatestVersionNumber": latest,
        "CreatedBy": "arn:aws:iam::644160558196:user/dev",
        "Tags": [],
    }


@pytest.fixture
def stubbed_ec2() -> Iterator[Stubber]:
    """The service's own EC2 client, answered by a Stubber that checks every request against the service model."""
    with Stubber(clients.ec2()) as stubber:
        yield stubber

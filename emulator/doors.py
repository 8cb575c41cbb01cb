"""IMDS doors outside EC2 instances, built in the emulator with real boto3 calls (SageMaker notebooks, Lightsail
instances, Beanstalk environments, Batch compute environments, EKS node groups, ECS capacity providers, EMR
clusters), and the SSM side of the caller analysis (a managed instance, the analyzer document, a recorded run)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3

from emulator import ACCOUNT, REGION
from emulator.moto_ext import record_command_output, register_managed_instance

IMAGE_ID = "ami-12c6146b"
RECORDINGS = Path(__file__).resolve().parent / "recordings"
RECORDED_OUTPUT = RECORDINGS / "caller-analysis-output.txt"
RECORDED_UNSUPPORTED_OS = RECORDINGS / "caller-analysis-unsupported-os.txt"


def _role() -> str:
    iam = boto3.client("iam")
    try:
        arn: str = iam.get_role(RoleName="imds-demo-service-role")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName="imds-demo-service-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    return arn


def _instance_profile() -> str:
    iam = boto3.client("iam")
    try:
        arn: str = iam.get_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]["Arn"]
    return arn


def _network() -> tuple[str, str]:
    ec2 = boto3.client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    return subnet, group


def create_template(name: str, tokens: str | None, *, tags: Mapping[str, str] | None = None) -> str:
    data: dict[str, Any] = {"ImageId": IMAGE_ID, "InstanceType": "t3.micro"}
    if tokens is not None:
        data["MetadataOptions"] = {"HttpTokens": tokens, "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"}
    kwargs: dict[str, Any] = {"LaunchTemplateName": name, "LaunchTemplateData": data}
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "launch-template", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    template_id: str = boto3.client("ec2").create_launch_template(**kwargs)["LaunchTemplate"]["LaunchTemplateId"]
    return template_id


def create_notebook(
    name: str, *, version: str | None = "1", stopped: bool = False, tags: Mapping[str, str] | None = None
) -> str:
    sagemaker = boto3.client("sagemaker")
    kwargs: dict[str, Any] = {"NotebookInstanceName": name, "InstanceType": "ml.t3.medium", "RoleArn": _role()}
    if version is not None:
        kwargs["InstanceMetadataServiceConfiguration"] = {"MinimumInstanceMetadataServiceVersion": version}
    if tags:
        kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    sagemaker.create_notebook_instance(**kwargs)
    if stopped:
        sagemaker.stop_notebook_instance(NotebookInstanceName=name)
    return name


def create_lightsail_instance(name: str, *, tags: Mapping[str, str] | None = None) -> str:
    boto3.client("lightsail").create_instances(
        instanceNames=[name],
        availabilityZone=f"{REGION}a",
        blueprintId="wordpress",
        bundleId="nano_3_0",
        tags=[{"key": k, "value": v} for k, v in (tags or {}).items()],
    )
    return name


def create_beanstalk_environment(application: str, name: str, *, disable_imdsv1: str | None) -> str:
    beanstalk = boto3.client("elasticbeanstalk")
    if not beanstalk.describe_applications(ApplicationNames=[application])["Applications"]:
        beanstalk.create_application(ApplicationName=application)
    options: list[Any] = []
    if disable_imdsv1 is not None:
        options.append(
            {"Namespace": "aws:autoscaling:launchconfiguration", "OptionName": "DisableIMDSv1", "Value": disable_imdsv1}
        )
    beanstalk.create_environment(
        ApplicationName=application,
        EnvironmentName=name,
        SolutionStackName="64bit Amazon Linux 2023 v4.3.0 running Python 3.11",
        OptionSettings=options,
    )
    return name


def create_batch_environment(
    name: str,
    *,
    template_id: str | None = None,
    version: str = "$Default",
    image_types: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
) -> str:
    subnet, group = _network()
    resources: dict[str, Any] = {
        "type": "EC2",
        "minvCpus": 0,
        "maxvCpus": 16,
        "desiredvCpus": 0,
        "instanceTypes": ["optimal"],
        "subnets": [subnet],
        "securityGroupIds": [group],
        "instanceRole": _instance_profile(),
    }
    if template_id:
        resources["launchTemplate"] = {"launchTemplateId": template_id, "version": version}
    if image_types:
        resources["ec2Configuration"] = [{"imageType": kind} for kind in image_types]
    kwargs: dict[str, Any] = {
        "computeEnvironmentName": name,
        "type": "MANAGED",
        "state": "ENABLED",
        "serviceRole": _role(),
        "computeResources": resources,
    }
    if tags:
        kwargs["tags"] = dict(tags)
    boto3.client("batch").create_compute_environment(**kwargs)
    return name


def create_eks_nodegroup(
    cluster: str,
    name: str,
    *,
    template_id: str | None = None,
    version: str = "1",
    tags: Mapping[str, str] | None = None,
) -> str:
    eks = boto3.client("eks")
    subnet, _ = _network()
    if cluster not in eks.list_clusters()["clusters"]:
        eks.create_cluster(name=cluster, roleArn=_role(), resourcesVpcConfig={"subnetIds": [subnet]})
    kwargs: dict[str, Any] = {"clusterName": cluster, "nodegroupName": name, "subnets": [subnet], "nodeRole": _role()}
    if template_id:
        kwargs["launchTemplate"] = {"id": template_id, "version": version}
    if tags:
        kwargs["tags"] = dict(tags)
    eks.create_nodegroup(**kwargs)
    return f"{cluster}/{name}"


def create_ecs_capacity_provider(
    name: str, *, template_id: str | None = None, launch_configuration: str | None = None, version: str = "$Latest"
) -> str:
    subnet, _ = _network()
    autoscaling = boto3.client("autoscaling")
    group = f"{name}-asg"
    source: dict[str, Any]
    if launch_configuration:
        autoscaling.create_launch_configuration(
            LaunchConfigurationName=launch_configuration,
            ImageId=IMAGE_ID,
            InstanceType="t3.micro",
            MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
        )
        source = {"LaunchConfigurationName": launch_configuration}
    else:
        source = {"LaunchTemplate": {"LaunchTemplateId": template_id, "Version": version}}
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=0, MaxSize=2, DesiredCapacity=0, VPCZoneIdentifier=subnet, **source
    )
    arn = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0][
        "AutoScalingGroupARN"
    ]
    boto3.client("ecs").create_capacity_provider(name=name, autoScalingGroupProvider={"autoScalingGroupArn": arn})
    return name


def create_emr_cluster(name: str, *, security_configuration: str | None = None, minimum_version: int = 1) -> str:
    emr = boto3.client("emr")
    kwargs: dict[str, Any] = {}
    if security_configuration:
        emr.create_security_configuration(
            Name=security_configuration,
            SecurityConfiguration=json.dumps(
                {
                    "InstanceMetadataServiceConfiguration": {
                        "MinimumInstanceMetadataServiceVersion": minimum_version,
                        "HttpPutResponseHopLimit": 1,
                    }
                }
            ),
        )
        kwargs["SecurityConfiguration"] = security_configuration
    cluster_id: str = emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-6.15.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        **kwargs,
    )["JobFlowId"]
    return cluster_id


@dataclass(frozen=True)
class Doors:
    """One door of each type that allows IMDSv1 (the notebook twice: running and stopped), by role."""

    notebook_running: str
    notebook_stopped: str
    lightsail: str
    beanstalk: str
    batch: str
    eks: str
    ecs: str
    emr: str
    batch_template: str
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def by_type(self) -> dict[str, list[str]]:
        return {
            "sagemaker_notebook": [self.notebook_running, self.notebook_stopped],
            "lightsail_instance": [self.lightsail],
            "elastic_beanstalk_environment": [self.beanstalk],
            "batch_compute_environment": [self.batch],
            "eks_nodegroup": [self.eks],
            "ecs_capacity_provider": [self.ecs],
            "emr_cluster": [self.emr],
        }


def seed_doors(*, prefix: str = "") -> Doors:
    """Each door type once, every one allowing IMDSv1, the way teams leave them."""
    batch_template = create_template(f"{prefix}batch-workers", "optional", tags={"team": "data"})
    node_template = create_template(f"{prefix}eks-workers", "optional", tags={"team": "platform"})
    ecs_template = create_template(f"{prefix}ecs-hosts", None, tags={"team": "platform"})
    doors = Doors(
        notebook_running=create_notebook(f"{prefix}research-notebook", version="1"),
        notebook_stopped=create_notebook(f"{prefix}finance-notebook", version=None, stopped=True),
        lightsail=create_lightsail_instance(f"{prefix}marketing-blog", tags={"team": "marketing"}),
        beanstalk=create_beanstalk_environment(f"{prefix}shop", f"{prefix}shop-prod", disable_imdsv1="false"),
        batch=create_batch_environment(f"{prefix}nightly-jobs", template_id=batch_template),
        eks=create_eks_nodegroup(f"{prefix}prod", f"{prefix}workers", template_id=node_template),
        ecs=create_ecs_capacity_provider(f"{prefix}ec2-capacity", template_id=ecs_template),
        emr=create_emr_cluster(f"{prefix}etl", security_configuration=f"{prefix}emr-default", minimum_version=1),
        batch_template=batch_template,
    )
    roles = {
        doors.notebook_running: "running, version 1",
        doors.notebook_stopped: "stopped, created without a version (IMDSv1)",
        doors.lightsail: "httpTokens optional",
        doors.beanstalk: "DisableIMDSv1 false",
        doors.batch: "launch template, HttpTokens optional",
        doors.eks: "launch template, HttpTokens optional",
        doors.ecs: "group's template without MetadataOptions",
        doors.emr: "security configuration, version 1",
    }
    return replace(doors, roles=roles)


# --- the SSM side of the caller analysis -------------------------------------------------------------------------


def create_analyzer_document(name: str, content: Mapping[str, Any]) -> str:
    """The stack's command document, as CloudFormation would create it."""
    boto3.client("ssm").create_document(
        Content=json.dumps(content), Name=name, DocumentType="Command", DocumentFormat="JSON"
    )
    return name


def manage_with_ssm(instance_id: str, *, platform_type: str = "Linux", ping_status: str = "Online") -> None:
    """What an SSM agent registering the instance does (only in the process that runs moto)."""
    register_managed_instance(
        instance_id, account=ACCOUNT, region=REGION, platform_type=platform_type, ping_status=ping_status
    )


def record_analyzer_run(instance_id: str, *, output: Path = RECORDED_OUTPUT, status: str = "Success") -> None:
    """The next analyzer commands sent to the instance return this recorded run (only where moto runs)."""
    record_command_output(
        instance_id,
        account=ACCOUNT,
        region=REGION,
        stdout=output.read_text(),
        status=status,
        response_code=0 if status == "Success" else 1,
    )

"""Events shaped as EventBridge delivers them to the handlers: CloudTrail records, the EC2 state change, the
schedule. The demo, the tests and the benchmark build their events here; the real recorded payloads are in
../shared/aws-samples/events and are read from there."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from emulator import ACCOUNT, GATE_RULE, REGION

CLOUDTRAIL = "AWS API Call via CloudTrail"


def envelope(
    detail_type: str,
    source: str,
    detail: dict[str, Any],
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    event_id: str | None = None,
    resources: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": list(resources),
        "detail": detail,
    }


def state_change_event(
    instance_id: str,
    state: str = "running",
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    event_id: str | None = None,
    id_key: str = "instance-id",
) -> dict[str, Any]:
    """An `EC2 Instance State-change Notification` (no trail needed)."""
    return envelope(
        "EC2 Instance State-change Notification",
        "aws.ec2",
        {id_key: instance_id, "state": state},
        account=account,
        region=region,
        event_id=event_id,
        resources=[f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
    )


def run_instances_event(
    instance_ids: Sequence[str], *, account: str = ACCOUNT, region: str = REGION, event_id: str | None = None
) -> dict[str, Any]:
    """A CloudTrail RunInstances record (camelCase response elements, shaped like the 2024 samples)."""
    detail = {
        "eventVersion": "1.09",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "RunInstances",
        "awsRegion": region,
        "recipientAccountId": account,
        "userIdentity": {"type": "AssumedRole", "arn": f"arn:aws:sts::{account}:assumed-role/Deployer/ci"},
        "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-12c6146b", "minCount": len(instance_ids)}]}},
        "responseElements": {
            "instancesSet": {
                "items": [
                    {
                        "instanceId": instance_id,
                        "instanceState": {"code": 0, "name": "pending"},
                        "metadataOptions": {"state": "pending", "httpTokens": "optional"},
                    }
                    for instance_id in instance_ids
                ]
            }
        },
    }
    return envelope(CLOUDTRAIL, "aws.ec2", detail, account=account, region=region, event_id=event_id)


def cloudtrail_event(
    event_name: str,
    *,
    source: str = "aws.ec2",
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    error_code: str | None = None,
    caller_role: str = "Deployer",
    caller_role_path: str = "/",
    account: str = ACCOUNT,
    region: str = REGION,
    event_id: str | None = None,
    event_source: str | None = None,
) -> dict[str, Any]:
    """A CloudTrail record of `event_name` by an assumed role. The session issuer's ARN carries the role's IAM
    path, which is how the service recognises its own calls; a failed call has an errorCode. `event_source`
    defaults to the EventBridge source's service (aws.ec2: ec2.amazonaws.com)."""
    detail: dict[str, Any] = {
        "eventVersion": "1.09",
        "eventSource": event_source or source.removeprefix("aws.") + ".amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
        "recipientAccountId": account,
        "userIdentity": {
            "type": "AssumedRole",
            "arn": f"arn:aws:sts::{account}:assumed-role/{caller_role}/session",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "userName": caller_role,
                    "arn": f"arn:aws:iam::{account}:role{caller_role_path}{caller_role}",
                }
            },
        },
        "requestParameters": request,
        "responseElements": response,
    }
    if error_code:
        detail["errorCode"] = error_code
    return envelope(CLOUDTRAIL, source, detail, account=account, region=region, event_id=event_id)


def modify_options_event(
    instance_id: str, tokens: str = "optional", *, caller_role: str = "PlatformAdmin", **kwargs: Any
) -> dict[str, Any]:
    """A ModifyInstanceMetadataOptions record (PascalCase request keys, as in the recorded sample)."""
    failed = kwargs.get("error_code") is not None
    return cloudtrail_event(
        "ModifyInstanceMetadataOptions",
        request={"ModifyInstanceMetadataOptionsRequest": {"HttpTokens": tokens, "InstanceId": instance_id}},
        response=None if failed else {"ModifyInstanceMetadataOptionsResponse": {"instanceId": instance_id}},
        caller_role=caller_role,
        **kwargs,
    )


# The calls that create or change a launch source. No recorded payload of these calls is public: the shapes follow
# AWS documentation examples (the Auto Scaling user guide's CreateLaunchConfiguration record: camelCase
# requestParameters, responseElements null on success) and the EC2 convention of <Action>Request / <Action>Response
# wrappers with PascalCase request keys and camelCase response keys (as in the recorded ModifyInstanceMetadataOptions
# sample in ../shared/aws-samples).


def create_launch_template_event(template_id: str, name: str = "web", **kwargs: Any) -> dict[str, Any]:
    return cloudtrail_event(
        "CreateLaunchTemplate",
        request={"CreateLaunchTemplateRequest": {"LaunchTemplateName": name, "LaunchTemplateData": {}}},
        response={
            "CreateLaunchTemplateResponse": {
                "launchTemplate": {"launchTemplateId": template_id, "launchTemplateName": name}
            }
        },
        **kwargs,
    )


def create_launch_template_version_event(template_id: str, version: int = 2, **kwargs: Any) -> dict[str, Any]:
    return cloudtrail_event(
        "CreateLaunchTemplateVersion",
        request={"CreateLaunchTemplateVersionRequest": {"LaunchTemplateId": template_id, "SourceVersion": "1"}},
        response={
            "CreateLaunchTemplateVersionResponse": {
                "launchTemplateVersion": {"launchTemplateId": template_id, "versionNumber": version}
            }
        },
        **kwargs,
    )


def modify_launch_template_event(template_id: str, default_version: str = "2", **kwargs: Any) -> dict[str, Any]:
    return cloudtrail_event(
        "ModifyLaunchTemplate",
        request={
            "ModifyLaunchTemplateRequest": {"LaunchTemplateId": template_id, "SetDefaultVersion": default_version}
        },
        response={"ModifyLaunchTemplateResponse": {"launchTemplate": {"launchTemplateId": template_id}}},
        **kwargs,
    )


def register_image_event(image_id: str, **kwargs: Any) -> dict[str, Any]:
    return cloudtrail_event(
        "RegisterImage",
        request={"name": "golden-2026-11", "rootDeviceName": "/dev/xvda"},
        response={"imageId": image_id},
        **kwargs,
    )


def create_launch_configuration_event(name: str, **kwargs: Any) -> dict[str, Any]:
    return cloudtrail_event(
        "CreateLaunchConfiguration",
        source="aws.autoscaling",
        request={"imageId": "ami-12c6146b", "instanceType": "t3.micro", "launchConfigurationName": name},
        response=None,
        **kwargs,
    )


# The IMDS doors outside EC2 instances: each call as CloudTrail records it (request parameters in the API's own
# camelCase; EMR's RunJobFlow id in its response), from the services' API references (no recorded payloads).
DOOR_SOURCES = {
    "sagemaker": ("aws.sagemaker", "sagemaker.amazonaws.com"),
    "lightsail": ("aws.lightsail", "lightsail.amazonaws.com"),
    "elasticbeanstalk": ("aws.elasticbeanstalk", "elasticbeanstalk.amazonaws.com"),
    "batch": ("aws.batch", "batch.amazonaws.com"),
    "eks": ("aws.eks", "eks.amazonaws.com"),
    "ecs": ("aws.ecs", "ecs.amazonaws.com"),
    "emr": ("aws.emr", "elasticmapreduce.amazonaws.com"),
}


def door_event(
    service: str,
    event_name: str,
    *,
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    source, event_source = DOOR_SOURCES[service]
    return cloudtrail_event(
        event_name, source=source, event_source=event_source, request=request, response=response, **kwargs
    )


def create_notebook_event(name: str, **kwargs: Any) -> dict[str, Any]:
    request = {"notebookInstanceName": name, "instanceType": "ml.t3.medium", "roleArn": "arn:aws:iam::1:role/x"}
    return door_event("sagemaker", "CreateNotebookInstance", request=request, **kwargs)


def lightsail_metadata_event(name: str, tokens: str | None = "optional", **kwargs: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"instanceName": name}
    if tokens is not None:
        request["httpTokens"] = tokens
    return door_event("lightsail", "UpdateInstanceMetadataOptions", request=request, **kwargs)


def create_lightsail_instances_event(names: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    request = {"instanceNames": list(names), "availabilityZone": "us-east-1a", "blueprintId": "wordpress"}
    return door_event("lightsail", "CreateInstances", request=request, **kwargs)


def create_beanstalk_environment_event(application: str, name: str, **kwargs: Any) -> dict[str, Any]:
    request = {"applicationName": application, "environmentName": name, "solutionStackName": "64bit Amazon Linux"}
    return door_event("elasticbeanstalk", "CreateEnvironment", request=request, **kwargs)


def update_compute_environment_event(name_or_arn: str, **kwargs: Any) -> dict[str, Any]:
    return door_event("batch", "UpdateComputeEnvironment", request={"computeEnvironment": name_or_arn}, **kwargs)


def create_nodegroup_event(cluster: str, nodegroup: str, **kwargs: Any) -> dict[str, Any]:
    request = {"clusterName": cluster, "nodegroupName": nodegroup, "nodeRole": "arn:aws:iam::1:role/node"}
    return door_event("eks", "CreateNodegroup", request=request, **kwargs)


def create_capacity_provider_event(name: str, **kwargs: Any) -> dict[str, Any]:
    request = {"name": name, "autoScalingGroupProvider": {"autoScalingGroupArn": "arn:aws:autoscaling:x"}}
    return door_event("ecs", "CreateCapacityProvider", request=request, **kwargs)


def run_job_flow_event(cluster_id: str, **kwargs: Any) -> dict[str, Any]:
    request = {"name": "etl", "releaseLabel": "emr-6.15.0", "securityConfiguration": "sc"}
    return door_event("emr", "RunJobFlow", request=request, response={"jobFlowId": cluster_id}, **kwargs)


def scheduled_event(
    rule_name: str = GATE_RULE, *, account: str = ACCOUNT, region: str = REGION, event_id: str | None = None
) -> dict[str, Any]:
    """What an EventBridge schedule rule sends (the usage gate's trigger)."""
    return envelope(
        "Scheduled Event",
        "aws.events",
        {},
        account=account,
        region=region,
        event_id=event_id,
        resources=[f"arn:aws:events:{region}:{account}:rule/{rule_name}"],
    )


def queue_batch(events: Sequence[Any], *, extra_bodies: Sequence[str] = ()) -> dict[str, Any]:
    """The SQS-to-Lambda event for EventBridge events delivered to the launch watch's queue (a burst gathered into one
    batch), plus raw bodies that are not events at all."""
    bodies = [json.dumps(event) for event in events] + list(extra_bodies)
    return {
        "Records": [
            {
                "messageId": f"m-{index}",
                "receiptHandle": f"r-{index}",
                "body": body,
                "attributes": {},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:launch-watch-events",
                "awsRegion": REGION,
            }
            for index, body in enumerate(bodies)
        ]
    }

"""CloudTrail records for the calls that create or change a launch source, in their EventBridge envelope.

No recorded payload of these calls is public; the shapes follow AWS documentation examples (the Auto Scaling user
guide's CreateLaunchConfiguration record: camelCase `requestParameters`, `responseElements` null on success) and
the EC2 convention of `<Action>Request` / `<Action>Response` wrappers with PascalCase request keys and camelCase
response keys (as in the real ModifyInstanceMetadataOptions record in ../shared/aws-samples).
"""

from __future__ import annotations

from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"


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
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "eventVersion": "1.09",
        "eventSource": source.removeprefix("aws.") + ".amazonaws.com",
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
    return {
        "version": "0",
        "id": f"{event_name}-0000-4000-8000-000000000001",
        "detail-type": "AWS API Call via CloudTrail",
        "source": source,
        "account": account,
        "time": "2026-11-20T12:00:00Z",
        "region": region,
        "resources": [],
        "detail": detail,
    }


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

"""One way to acknowledge a cdk-nag finding: narrowly, on the construct that causes it, with a written reason."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct

# CDK files plugin findings under "<plugin name>::<rule>"; an id without a prefix is taken for an annotation.
NAG_PLUGIN = "AwsSolutions"


def acknowledge(scope: IConstruct, finding_id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding (e.g. ``AwsSolutions-IAM5[Resource::*]``) on ``scope``.

    cdk-nag 3 matches the full finding id, so each wildcard resource is acknowledged on its own.
    """
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=f"{NAG_PLUGIN}::{finding_id}", reason=reason))


def nag_resource(scope: IConstruct, value: str) -> str:
    """How cdk-nag writes a resource in a finding id: ``Ref``s to pseudo parameters become ``<AWS::Partition>``."""
    return _flatten(cdk.Stack.of(scope).resolve(value))


def _flatten(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        return f"<{logical_id}.{attribute}>"
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_flatten(part) for part in parts)
    raise ValueError(f"cannot express {value!r} as a cdk-nag finding id")

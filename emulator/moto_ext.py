"""Teach moto the AWS behaviour it lacks, so the product code runs unchanged against it.

- DescribeInstances filters `metadata-options.*` (moto: NotImplementedError in-process, HTTP 500 on a server).
- ModifyInstanceMetadataOptions keeps the fields a call does not pass (moto replaces the whole block).
- Get/ModifyInstanceMetadataDefaults (moto has neither).
- AMI `ImdsSupport` (moto accepts it in ModifyImageAttribute and RegisterImage, but neither stores nor returns it).
- AssumeRole refuses a role that does not exist or does not trust the caller's account (moto grants any role ARN).
"""

from __future__ import annotations

import json
import re
from typing import Any

from moto.ec2 import utils as ec2_utils
from moto.ec2.models.instances import InstanceBackend, MetadataOptions

METADATA_FILTERS = {
    "metadata-options.http-tokens": "metadata_options.http_tokens",
    "metadata-options.http-endpoint": "metadata_options.http_endpoint",
    "metadata-options.state": "metadata_options.state",
    "metadata-options.instance-metadata-tags": "metadata_options.instance_metadata_tags",
}

_original_modify = InstanceBackend.modify_instance_metadata_options


def _modify_keeping_unset_fields(
    self: InstanceBackend,
    instance_id: str,
    http_tokens: str | None = None,
    hop_limit: int | None = None,
    http_endpoint: str | None = None,
    dry_run: bool | None = False,
    http_protocol: str | None = None,
    metadata_tags: str | None = None,
) -> MetadataOptions:
    current = self.get_instance(instance_id).metadata_options  # raises InvalidInstanceID.NotFound like AWS

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    return _original_modify(
        self,
        instance_id,
        http_tokens=pick(http_tokens, current.http_tokens),
        hop_limit=pick(hop_limit, current.http_put_response_hop_limit),
        http_endpoint=pick(http_endpoint, current.http_endpoint),
        dry_run=dry_run,
        http_protocol=pick(http_protocol, current.http_protocol_ipv6),
        metadata_tags=pick(metadata_tags, current.instance_metadata_tags),
    )


def teach_moto() -> None:
    """Idempotent; call before the first request reaches moto (in the process that runs moto)."""
    ec2_utils.filter_dict_attribute_mapping.update(METADATA_FILTERS)
    InstanceBackend.modify_instance_metadata_options = _modify_keeping_unset_fields  # type: ignore[method-assign]
    teach_metadata_defaults()
    teach_image_imds_support()
    teach_assume_role_checks()


# GetInstanceMetadataDefaults / ModifyInstanceMetadataDefaults, for the gate's opt-in account default.
# The account-level defaults live on each region's EC2 backend; `ManagedBy` and `ManagedExceptionMessage` can be set
# there by a test (`metadata_defaults_of(backend)["ManagedBy"] = "declarative-policy"`) to stand for an
# organization's declarative policy, which the API itself cannot set.

_DEFAULTS_ATTRIBUTE = "_imds_enforcer_metadata_defaults"
_DEFAULT_FIELDS = (
    "HttpTokens",
    "HttpPutResponseHopLimit",
    "HttpEndpoint",
    "InstanceMetadataTags",
    "HttpTokensEnforced",
)


def metadata_defaults_of(backend: Any) -> dict[str, Any]:
    """The AccountLevel block of one EC2 backend (account and region), created empty (as AWS: nothing set)."""
    if not hasattr(backend, _DEFAULTS_ATTRIBUTE):
        setattr(backend, _DEFAULTS_ATTRIBUTE, {"ManagedBy": "account"})
    defaults: dict[str, Any] = getattr(backend, _DEFAULTS_ATTRIBUTE)
    return defaults


def teach_metadata_defaults() -> None:
    """Idempotent; part of teach_moto()."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses import EC2Response

    def get_instance_metadata_defaults(self: EC2Response) -> ActionResult:
        return ActionResult({"AccountLevel": dict(metadata_defaults_of(self.ec2_backend))})

    def modify_instance_metadata_defaults(self: EC2Response) -> ActionResult:
        defaults = metadata_defaults_of(self.ec2_backend)
        for name in _DEFAULT_FIELDS:
            value = self._get_param(name)
            if value is None:
                continue
            if value in ("no-preference", "-1", -1):  # AWS: clear the preference
                defaults.pop(name, None)
            else:
                defaults[name] = int(value) if name == "HttpPutResponseHopLimit" else value
        return ActionResult({"Return": True})

    EC2Response.get_instance_metadata_defaults = get_instance_metadata_defaults  # type: ignore[attr-defined]
    EC2Response.modify_instance_metadata_defaults = modify_instance_metadata_defaults  # type: ignore[attr-defined]


# AMI ImdsSupport, for the launch-source checks. DescribeImages already writes an Ami's `imds_support` attribute
# (moto serializes by the output shape's member names); only the two calls that set it are missing.

_IMDS_SUPPORT_VALUES = ("v2.0",)


def teach_image_imds_support() -> None:
    """Idempotent; part of teach_moto(). ModifyImageAttribute(ImdsSupport={"Value": "v2.0"}) and RegisterImage(
    ImdsSupport="v2.0") store the value on the AMI; like AWS, any other value is refused and nothing unsets it."""
    from moto.core.responses import ActionResult, EmptyResult
    from moto.ec2.exceptions import InvalidParameterValueError
    from moto.ec2.responses.amis import AmisResponse

    original_modify = getattr(AmisResponse, "_imds_enforcer_original_modify", AmisResponse.modify_image_attribute)
    original_register = getattr(AmisResponse, "_imds_enforcer_original_register", AmisResponse.register_image)

    def value_of(raw: Any) -> str | None:
        value = raw.get("Value") if isinstance(raw, dict) else raw
        if value is None:
            return None
        if value not in _IMDS_SUPPORT_VALUES:
            raise InvalidParameterValueError(f"ImdsSupport={value}")
        return str(value)

    def modify_image_attribute(self: AmisResponse) -> ActionResult:
        value = value_of(self._get_param("ImdsSupport"))
        if value is None:
            return original_modify(self)
        self.error_on_dryrun()
        image = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]  # NotFound like AWS
        image.imds_support = value
        return EmptyResult()

    def register_image(self: AmisResponse) -> ActionResult:
        value = value_of(self._get_param("ImdsSupport"))
        result = original_register(self)
        if value is not None:
            image_id = result.result["ImageId"]  # type: ignore[index]
            self.ec2_backend.describe_images(ami_ids=[image_id])[0].imds_support = value
        return result

    AmisResponse._imds_enforcer_original_modify = original_modify  # type: ignore[attr-defined]
    AmisResponse._imds_enforcer_original_register = original_register  # type: ignore[attr-defined]
    AmisResponse.modify_image_attribute = modify_image_attribute  # type: ignore[method-assign]
    AmisResponse.register_image = register_image  # type: ignore[method-assign]


# AssumeRole as AWS answers it: AccessDenied when the role does not exist, or when its trust policy does not name the
# caller's account (moto hands out credentials for any role ARN, which is how it switches accounts). This is what
# "the StackSet has not reached this account yet" looks like to the organization audit. Trust conditions are not
# evaluated (moto evaluates no IAM policy); a Principal of "*", the account id, or any ARN in the caller's account
# counts as trusting it.

_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/.+$")


def _trusts(policy_document: Any, caller_account: str, partition: str) -> bool:
    document = json.loads(policy_document) if isinstance(policy_document, str) else policy_document
    statements = document.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        if statement.get("Effect") != "Allow" or not {"sts:AssumeRole", "sts:*", "*"} & set(actions):
            continue
        principal = statement.get("Principal", {})
        principals = principal.get("AWS", []) if isinstance(principal, dict) else [principal]
        for name in principals if isinstance(principals, list) else [principals]:
            if name in ("*", caller_account) or str(name).startswith(f"arn:{partition}:iam::{caller_account}:"):
                return True
    return False


def teach_assume_role_checks() -> None:
    """Idempotent; part of teach_moto()."""
    from moto.core.exceptions import AccessDeniedError
    from moto.iam.models import iam_backends
    from moto.sts.models import STSBackend

    original = getattr(STSBackend, "_imds_enforcer_original_assume_role", STSBackend.assume_role)

    def assume_role(self: STSBackend, **kwargs: Any) -> Any:
        role_arn = str(kwargs.get("role_arn", ""))
        match = _ROLE_ARN.match(role_arn)
        trusted = False
        if match is not None:
            partition, account = match.group(1), match.group(2)
            roles = iam_backends[account][partition].roles.values()
            role = next((candidate for candidate in roles if candidate.arn == role_arn), None)
            trusted = role is not None and _trusts(role.assume_role_policy_document, self.account_id, partition)
        if not trusted:
            raise AccessDeniedError(
                user_arn=f"arn:aws:iam::{self.account_id}:root", action=f"sts:AssumeRole on resource: {role_arn}"
            )
        return original(self, **kwargs)

    STSBackend._imds_enforcer_original_assume_role = original  # type: ignore[attr-defined]
    STSBackend.assume_role = assume_role  # type: ignore[method-assign,assignment]

"""SSM adapter: the central exemption list's parameter; for the caller analysis, which instances SSM manages, sending
the analyzer document, its result."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

if TYPE_CHECKING:
    from mypy_boto3_ssm.type_defs import InstanceInformationTypeDef

# DescribeInstanceInformation takes at most 50 values in a filter (and 50 results a page); SendCommand at most 50
# instance ids.
INSTANCE_IDS_LIMIT = 50
COMMENT = "imds-enforcer caller analysis of a blocked instance"
# How long SSM may wait for an offline agent before giving the command up (DeliveryTimedOut).
DELIVERY_TIMEOUT_SECONDS = 600


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def managed_instances(instance_ids: Sequence[str]) -> list[InstanceInformationTypeDef]:
    """SSM's record of the named instances that it manages (those it does not are simply absent)."""
    found: list[InstanceInformationTypeDef] = []
    paginator = clients.ssm().get_paginator("describe_instance_information")
    with translated("DescribeInstanceInformation"):
        for chunk in _chunks(list(dict.fromkeys(instance_ids)), INSTANCE_IDS_LIMIT):
            pages = paginator.paginate(
                Filters=[{"Key": "InstanceIds", "Values": list(chunk)}],
                PaginationConfig={"PageSize": INSTANCE_IDS_LIMIT},
            )
            for page in pages:
                found.extend(page.get("InstanceInformationList", []))
    return found


def send_analysis(instance_ids: Sequence[str], *, document: str, minutes: int) -> str:
    """One SendCommand of the analyzer document to these instances (by id, never by a target query); its id."""
    with translated("SendCommand"):
        response = clients.ssm().send_command(
            InstanceIds=list(instance_ids),
            DocumentName=document,
            DocumentVersion="$DEFAULT",
            Parameters={"Minutes": [str(minutes)]},
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=COMMENT,
            MaxConcurrency=str(INSTANCE_IDS_LIMIT),
            MaxErrors=str(INSTANCE_IDS_LIMIT),
        )
    return str(response["Command"]["CommandId"])


def command_invocation(command_id: str, instance_id: str) -> Mapping[str, Any] | None:
    """The command's result on one instance; None once SSM no longer has it (or never had: a foreign id)."""
    try:
        response = clients.ssm().get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("InvocationDoesNotExist", "InvalidCommandId"):
            return None
        raise AwsError.from_client_error("GetCommandInvocation", error) from error
    return response


def parameter_value(name: str) -> str:
    """The parameter's value (a String parameter; a SecureString is decrypted with the role's own rights)."""
    with translated("GetParameter"):
        return clients.ssm().get_parameter(Name=name, WithDecryption=True)["Parameter"].get("Value", "")

"""Lightsail adapter: instances and their metadata options."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

if TYPE_CHECKING:
    from mypy_boto3_lightsail.type_defs import InstanceTypeDef


def available() -> bool:
    """Whether this region has Lightsail (it is in fewer regions than EC2; elsewhere its endpoint does not resolve).
    An endpoint of our own (an emulator) is taken to have it."""
    client = clients.lightsail()
    host = urlparse(client.meta.endpoint_url).hostname or ""
    if not host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return True
    return client.meta.region_name in clients.available_regions("lightsail")


def iter_instances() -> Iterator[InstanceTypeDef]:
    paginator = clients.lightsail().get_paginator("get_instances")
    with translated("GetInstances"):
        for page in paginator.paginate():
            yield from page.get("instances", [])


def get_instance(name: str) -> InstanceTypeDef | None:
    """The named instance, or None when Lightsail does not know it (NotFoundException)."""
    try:
        return clients.lightsail().get_instance(instanceName=name)["instance"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NotFoundException":
            return None
        raise AwsError.from_client_error("GetInstance", error) from error


def require_tokens(name: str) -> str:
    """httpTokens=required, sent explicitly: Lightsail resets an omitted httpTokens to optional (its API reference),
    while an omitted hop limit or endpoint keeps its value. Returns the operation's status."""
    with translated("UpdateInstanceMetadataOptions"):
        response = clients.lightsail().update_instance_metadata_options(instanceName=name, httpTokens="required")
    return str(response.get("operation", {}).get("status", ""))

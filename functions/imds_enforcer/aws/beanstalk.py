"""Elastic Beanstalk adapter: environments and their DisableIMDSv1 option (read only: never changed here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated

if TYPE_CHECKING:
    from mypy_boto3_elasticbeanstalk.type_defs import (
        ConfigurationOptionSettingTypeDef,
        EnvironmentDescriptionTypeDef,
    )


def environments(names: Sequence[str] | None = None) -> list[EnvironmentDescriptionTypeDef]:
    """The live environments of the region (None) or the named ones (deleted ones left out)."""
    paginator = clients.elasticbeanstalk().get_paginator("describe_environments")
    found: list[EnvironmentDescriptionTypeDef] = []
    with translated("DescribeEnvironments"):
        pages = (
            paginator.paginate(IncludeDeleted=False)
            if names is None
            else paginator.paginate(IncludeDeleted=False, EnvironmentNames=list(names))
        )
        for page in pages:
            found.extend(page.get("Environments", []))
    return found


def option_settings(application: str, environment: str) -> list[ConfigurationOptionSettingTypeDef]:
    with translated("DescribeConfigurationSettings"):
        response = clients.elasticbeanstalk().describe_configuration_settings(
            ApplicationName=application, EnvironmentName=environment
        )
    settings: list[ConfigurationOptionSettingTypeDef] = []
    for configuration in response.get("ConfigurationSettings", []):
        settings.extend(configuration.get("OptionSettings", []))
    return settings

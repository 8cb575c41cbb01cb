"""Read the central exemption list for a run (domain/exemptions.py says what it is)."""

from __future__ import annotations

from datetime import datetime

from imds_enforcer.aws import ssm
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.exemptions import CentralExemptions, ExemptionListError, parse_exemption_list
from imds_enforcer.domain.report import Finding
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger


def with_central_exemptions(settings: Settings, *, now: datetime) -> Settings:
    """The settings with this run's exemption list when EXEMPTION_PARAMETER names one. A list that cannot be read or
    does not validate raises ExemptionListError before anything is changed: exemptions unknown, nothing may move."""
    if not settings.EXEMPTION_PARAMETER:
        return settings
    try:
        text = ssm.parameter_value(settings.EXEMPTION_PARAMETER)
    except AwsError as error:
        raise ExemptionListError(
            f"{settings.EXEMPTION_PARAMETER}: the exemption list cannot be read ({error.code}): nothing changed"
        ) from error
    try:
        central = parse_exemption_list(text, parameter=settings.EXEMPTION_PARAMETER, now=now)
    except ExemptionListError as error:
        logger.error("exemption list invalid: nothing changed", extra={"error": str(error)})
        raise
    logger.info(
        "central exemption list read",
        extra={"parameter": central.parameter, "entries": len(central.entries), "expired": len(central.expired())},
    )
    return settings.with_exemptions(central)


def expired_exemption_findings(settings: Settings) -> list[Finding]:
    """The gate reports each expired entry at every run, until someone renews or removes it."""
    central = settings.exemptions
    return central.expired_findings() if isinstance(central, CentralExemptions) else []

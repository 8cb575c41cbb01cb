"""Gather the evidence the decisions read: each instance's metric series and its AMI's name.

Shared by the usage gate (its whole sweep) and the launch watch (the restarted and set-back instances of one event),
so both decide on the same facts, fetched the same way: every metric of every instance in one query list, so the
GetMetricData calls stay at ceil(queries / 500) whatever the mix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from imds_enforcer.aws import cloudwatch, ec2
from imds_enforcer.aws.cloudwatch import MetricRequest
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.metric_names import NO_TOKEN, NO_TOKEN_REJECTED, RUNNING_REFERENCE
from imds_enforcer.domain.settings import Settings
from imds_enforcer.domain.usage import MetadataUsage, MetricSeries, UsageWindow, watch_window
from imds_enforcer.observability import logger


def fetch_usage(
    decided: Sequence[InstanceFacts],
    watched: Sequence[InstanceFacts],
    *,
    settings: Settings,
    now: datetime,
) -> dict[str, MetadataUsage]:
    """MetadataNoToken and the running reference for each `decided` instance, MetadataNoTokenRejected for each
    `watched` one (an instance may be both): 2 queries per decided instance, 1 per watched one."""
    requests = [
        MetricRequest(facts.instance_id, metric)
        for facts in _unique(decided)
        for metric in (NO_TOKEN, RUNNING_REFERENCE)
    ]
    requests += [MetricRequest(facts.instance_id, NO_TOKEN_REJECTED) for facts in _unique(watched)]
    lookback = UsageWindow.ending_at(now, settings.LOOKBACK_DAYS)
    start = min(lookback.start, watch_window(now, settings).start)
    series = cloudwatch.fetch_series(requests, start=start, end=lookback.end) if requests else {}

    def of(instance_id: str, metric: str) -> MetricSeries:
        return series.get(MetricRequest(instance_id, metric)) or MetricSeries()

    return {
        facts.instance_id: MetadataUsage(
            instance_id=facts.instance_id,
            no_token=of(facts.instance_id, NO_TOKEN),
            running=of(facts.instance_id, RUNNING_REFERENCE),
            no_token_rejected=of(facts.instance_id, NO_TOKEN_REJECTED),
        )
        for facts in _unique([*decided, *watched])
    }


def with_image_names(instances: Sequence[InstanceFacts]) -> list[InstanceFacts]:
    """The instances with their AMI's name filled in (one DescribeImages per 200 distinct AMIs), so container hosts
    are recognised by the AMI family they run as well as by their tags. When the AMIs cannot be read, the names stay
    unknown and container hosts are recognised by their tags only (logged; never a failure of the run)."""
    try:
        names = ec2.image_names([facts.image_id for facts in instances])
    except AwsError as error:
        logger.warning("AMI names unknown: container hosts recognised by tags only", extra={"code": error.code})
        return list(instances)
    return [replace(facts, image_name=names.get(facts.image_id, "")) for facts in instances]


def _unique(instances: Iterable[InstanceFacts]) -> list[InstanceFacts]:
    return list({facts.instance_id: facts for facts in instances}.values())

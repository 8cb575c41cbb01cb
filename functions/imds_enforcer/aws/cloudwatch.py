"""CloudWatch adapter: the only module that calls the CloudWatch API. Batches GetMetricData for a whole fleet.

One GetMetricData call answers up to 500 queries (one query = one metric of one instance), and returns up to
100,800 datapoints before it pages. The period is chosen so that a full call fits in one page:

- it must split a day evenly, so each bucket falls inside one day of the window (coverage is counted in days);
- it must be a multiple of an hour, which CloudWatch accepts for any StartTime up to its 455-day retention;
- the finest such period with 500 x points-per-query <= 100,800 wins: at most 201 points per query.

With the default 14-day window that is 2 hours (168 points, 84,000 per full call): ceil(queries / 500) calls.
Beyond about 200 days even a daily period is too fine, so fewer queries go into each call instead (still one page
each). NextToken pages are followed all the same: AWS may page earlier than the documented limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated
from imds_enforcer.domain.metric_names import EC2_NAMESPACE, NO_TOKEN_REJECTED, RUNNING_REFERENCE
from imds_enforcer.domain.usage import DAY_SECONDS, HOUR_SECONDS, MetricSeries
from imds_enforcer.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import GetMetricDataOutputTypeDef, MetricDataQueryTypeDef

MAX_QUERIES_PER_CALL = 500
MAX_DATAPOINTS_PER_CALL = 100_800
# Hour multiples that divide a day, finest first.
DAY_PERIODS = tuple(hours * HOUR_SECONDS for hours in (1, 2, 3, 4, 6, 8, 12, 24))


@dataclass(frozen=True, slots=True)
class BatchPlan:
    period: int
    queries_per_call: int

    def calls_for(self, queries: int) -> int:
        return math.ceil(queries / self.queries_per_call)


def plan_batches(window_seconds: int) -> BatchPlan:
    """The finest day-splitting period at which a full call of 500 queries stays within one page."""
    for period in DAY_PERIODS:
        # +1: a window that is not a multiple of the period (or a service that counts both ends) gets one more.
        points = math.ceil(window_seconds / period) + 1
        if MAX_QUERIES_PER_CALL * points <= MAX_DATAPOINTS_PER_CALL:
            return BatchPlan(period=period, queries_per_call=MAX_QUERIES_PER_CALL)
    points = math.ceil(window_seconds / DAY_SECONDS) + 1
    return BatchPlan(period=DAY_SECONDS, queries_per_call=max(1, MAX_DATAPOINTS_PER_CALL // points))


@dataclass(frozen=True, slots=True)
class MetricRequest:
    instance_id: str
    metric_name: str  # metric_names.NO_TOKEN, NO_TOKEN_REJECTED or RUNNING_REFERENCE

    @property
    def stat(self) -> str:
        # The reference metric only says whether the instance ran: the count of its datapoints is enough.
        return "SampleCount" if self.metric_name == RUNNING_REFERENCE else "Sum"


def fetch_series(
    requests: Sequence[MetricRequest], *, start: datetime, end: datetime
) -> dict[MetricRequest, MetricSeries]:
    """The Sum series of every requested instance metric over [start, end): ceil(len / 500) calls for windows up to
    200 days. Every request gets a series, empty when CloudWatch has no data (which means missing evidence)."""
    plan = plan_batches(int((end - start).total_seconds()))
    found = {request: MetricSeries(period=plan.period) for request in requests}
    paginator = clients.cloudwatch().get_paginator("get_metric_data")
    for chunk in _chunks(requests, plan.queries_per_call):
        by_id = {f"q{index}": request for index, request in enumerate(chunk)}
        pages = paginator.paginate(
            MetricDataQueries=[_query(query_id, request, plan.period) for query_id, request in by_id.items()],
            StartTime=start,
            EndTime=end,
            ScanBy="TimestampAscending",
        )
        with translated("GetMetricData"):
            for page in pages:
                _collect(page, by_id, found)
    return found


def _collect(
    page: GetMetricDataOutputTypeDef, by_id: Mapping[str, MetricRequest], found: dict[MetricRequest, MetricSeries]
) -> None:
    for message in page.get("Messages", []):
        logger.warning("GetMetricData says", extra={"code": message.get("Code"), "value": message.get("Value")})
    for result in page.get("MetricDataResults", []):
        request = by_id.get(result.get("Id", ""))
        if request is None:
            continue
        status = result.get("StatusCode", "Complete")
        if status not in ("Complete", "PartialData"):
            # InternalError / Forbidden: whatever came back stays, the rest is missing evidence.
            logger.warning(
                "metric data incomplete",
                extra={"instance_id": request.instance_id, "metric": request.metric_name, "status": status},
            )
        series = found[request]
        for timestamp, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
            series.append(timestamp, value)


def _query(query_id: str, request: MetricRequest, period: int) -> MetricDataQueryTypeDef:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": EC2_NAMESPACE,
                "MetricName": request.metric_name,
                "Dimensions": [{"Name": "InstanceId", "Value": request.instance_id}],
            },
            "Period": period,
            "Stat": request.stat,
        },
        "ReturnData": True,
    }


def _chunks(items: Sequence[MetricRequest], size: int) -> Iterator[Sequence[MetricRequest]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


# A Metrics Insights query over every instance of the account and region: one call, whatever the fleet size. Metrics
# Insights reads only the most recent 3 hours, which is what a rejection alarm needs. GROUP BY returns one series per
# instance, labelled with the instance id; at most 500 series (the ones with the most rejections first).
REJECTING_INSTANCES_QUERY = (  # constants only: nothing from outside reaches the query
    f'SELECT SUM({NO_TOKEN_REJECTED}) FROM SCHEMA("{EC2_NAMESPACE}", InstanceId) '  # noqa: S608
    "GROUP BY InstanceId ORDER BY SUM() DESC LIMIT 500"
)
INSIGHTS_MAX_LOOKBACK_SECONDS = 3 * HOUR_SECONDS


def rejecting_instances(*, start: datetime, end: datetime, period: int = 300) -> dict[str, float]:
    """Instance id -> IMDSv1 calls rejected in [start, end) (at most the last 3 hours), for every instance with any."""
    found: dict[str, float] = {}
    paginator = clients.cloudwatch().get_paginator("get_metric_data")
    pages = paginator.paginate(
        MetricDataQueries=[
            {"Id": "rejected", "Expression": REJECTING_INSTANCES_QUERY, "Period": period, "ReturnData": True}
        ],
        StartTime=start,
        EndTime=end,
        ScanBy="TimestampAscending",
    )
    with translated("GetMetricData"):
        for page in pages:
            for result in page.get("MetricDataResults", []):
                instance_id = str(result.get("Label", ""))
                total = sum(value for value in result.get("Values", []) if value == value)  # NaN is not a count
                if instance_id.startswith("i-") and total > 0:
                    found[instance_id] = found.get(instance_id, 0.0) + total
    return found

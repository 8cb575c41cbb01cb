"""Test support for the usage gate: seed CloudWatch metrics, age instances in moto, count and fault API calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

ACCOUNT = "123456789012"
REGION = "us-east-1"
PUT_BATCH = 1000  # PutMetricData takes up to 1000 datums a call


def put_daily(
    instance_id: str,
    values: Sequence[float | None],
    *,
    metric: str = "MetadataNoToken",
    now: datetime | None = None,
    hour_offset: float = 3.0,
) -> None:
    """One datapoint a day, values[0] for the day before `now`, values[1] for two days before, ...;
    None leaves that day without data (missing evidence, not zero)."""
    now = now or datetime.now(UTC)
    points = [
        (now - timedelta(days=day, hours=hour_offset), value)
        for day, value in enumerate(values)
        if value is not None
    ]
    put_points(instance_id, points, metric=metric)


def put_points(instance_id: str, points: Iterable[tuple[datetime, float]], *, metric: str = "MetadataNoToken") -> None:
    data: list[Any] = [
        {
            "MetricName": metric,
            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
            "Timestamp": timestamp,
            "Value": float(value),
            "Unit": "Count",
        }
        for timestamp, value in points
    ]
    cloudwatch = boto3.client("cloudwatch")
    for start in range(0, len(data), PUT_BATCH):
        cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=data[start : start + PUT_BATCH])


def set_launch_time(instance_ids: Iterable[str], launched: datetime, *, account: str = ACCOUNT, region: str = REGION) -> None:
    """moto stamps every instance "now" at RunInstances; age them in its backend (moto keeps naive UTC)."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account][region]
    naive = launched.astimezone(UTC).replace(tzinfo=None)
    for instance_id in instance_ids:
        backend.get_instance(instance_id).launch_time = naive


def aged(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


@dataclass
class CallLog:
    """Every API call a client makes (one entry per operation call, before retries)."""

    counts: Counter[str] = field(default_factory=Counter)
    metric_queries: list[int] = field(default_factory=list)  # queries in each GetMetricData call

    def hook(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.counts[model.name] += 1
        if model.name == "GetMetricData":
            self.metric_queries.append(len(params.get("MetricDataQueries", [])))


def count_calls(*clients: Any) -> CallLog:
    log = CallLog()
    for client in clients:
        client.meta.events.register("provide-client-params.*.*", log.hook)
    return log


def throttle_first(client: Any, operation: str, times: int) -> Callable[[], int]:
    """Answer the first `times` sends of an EC2 operation with 503 RequestLimitExceeded (real retries follow).
    Returns a function that says how many sends were throttled."""
    sent = {"n": 0}
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>RequestLimitExceeded</Code>'
        b"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>"
    )

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if sent["n"] >= times:
            return None
        sent["n"] += 1
        return AWSResponse(request.url, 503, {"Content-Type": "text/xml"}, _Raw(body))

    client.meta.events.register_first(f"before-send.ec2.{operation}", hook)
    return lambda: sent["n"]


class _Raw:
    """The minimal raw-response object AWSResponse reads its body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self._body

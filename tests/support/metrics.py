"""Test support for the usage gate: seed the CloudWatch metrics EC2 would have published."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

PUT_BATCH = 1000  # PutMetricData takes up to 1000 datums a call


def put_daily(
    instance_id: str,
    values: Sequence[float | None],
    *,
    metric: str = "MetadataNoToken",
    now: datetime | None = None,
    hour_offset: float = 3.0,
    running: Sequence[bool] | None = None,
    cloudwatch: Any = None,
) -> None:
    """One datapoint a day, values[0] for the day before `now`, values[1] for two days before, ...;
    None leaves that day without data (missing evidence, not zero).

    For MetadataNoToken, the reference metric EC2 publishes for a running instance (CPUUtilization) is written too:
    by default on every one of those days (the instance ran each day, whatever MetadataNoToken says), or on the days
    `running` says (False: stopped that day)."""
    now = now or datetime.now(UTC)
    points = [
        (now - timedelta(days=day, hours=hour_offset), value) for day, value in enumerate(values) if value is not None
    ]
    put_points(instance_id, points, metric=metric, cloudwatch=cloudwatch)
    if metric == "MetadataNoToken":
        days = running if running is not None else [True] * len(values)
        reference = [(now - timedelta(days=day, hours=hour_offset + 1), 5.0) for day, up in enumerate(days) if up]
        put_points(instance_id, reference, metric="CPUUtilization", cloudwatch=cloudwatch)


def put_points(
    instance_id: str,
    points: Iterable[tuple[datetime, float]],
    *,
    metric: str = "MetadataNoToken",
    cloudwatch: Any = None,
) -> None:
    """`cloudwatch`: another account's or region's client (default: the test's own account and region)."""
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
    cloudwatch = cloudwatch or boto3.client("cloudwatch")
    for start in range(0, len(data), PUT_BATCH):
        cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=data[start : start + PUT_BATCH])


def aged(days: float) -> datetime:
    """The moment `days` ago."""
    return datetime.now(UTC) - timedelta(days=days)

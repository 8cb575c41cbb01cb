"""Test support for the usage gate's continuation on moto: the stack's sweep bucket and schedule group, a Lambda
context whose time budget is spent by modifies (not by the wall clock: the test never depends on speed), and the
continuation schedule fired by hand (moto stores EventBridge Scheduler schedules but never fires them, nor deletes a
one-time schedule after it ran, as ActionAfterCompletion=DELETE does on AWS)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from tests.support.context import FakeLambdaContext

BUCKET = "imds-enforcer-sweeps-test"
GROUP = "imds-enforcer-gate-continuations"
ROLE_ARN = "arn:aws:iam::123456789012:role/imds-enforcer/gate-continuation-scheduler"
DEAD_LETTER_ARN = "arn:aws:sqs:us-east-1:123456789012:imds-enforcer-gate-dlq"


def deploy_continuation(monkeypatch: pytest.MonkeyPatch, *, max_continuations: int = 20) -> None:
    """What the stack gives the gate: an encrypted bucket, a schedule group, and their names in the environment."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    boto3.client("scheduler").create_schedule_group(Name=GROUP)
    monkeypatch.setenv("SWEEP_STATE_BUCKET", BUCKET)
    monkeypatch.setenv("CONTINUATION_SCHEDULE_GROUP", GROUP)
    monkeypatch.setenv("CONTINUATION_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("CONTINUATION_DEAD_LETTER_ARN", DEAD_LETTER_ARN)
    monkeypatch.setenv("MAX_CONTINUATIONS", str(max_continuations))


@dataclass
class ModifyLog:
    """Every ModifyInstanceMetadataOptions call the client makes (once per call, not per retry), by instance."""

    calls: list[str] = field(default_factory=list)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(str(params["InstanceId"]))

    def attach(self, client: Any) -> ModifyLog:
        client.meta.events.register("provide-client-params.ec2.ModifyInstanceMetadataOptions", self)
        return self

    @property
    def per_instance(self) -> Counter[str]:
        return Counter(self.calls)


class BudgetContext(FakeLambdaContext):
    """A run whose remaining time falls by `ms_per_modify` with each modify it makes: with a 60 s margin and
    `60 s + n * ms_per_modify` to start with, a run has time for n modifies."""

    def __init__(self, log: ModifyLog, *, modifies: int, ms_per_modify: int = 1000, margin_ms: int = 60_000) -> None:
        super().__init__()
        self._log = log
        self._start = len(log.calls)
        self._ms_per_modify = ms_per_modify
        self._budget = margin_ms + modifies * ms_per_modify - 1  # below the margin after the n-th

    def get_remaining_time_in_millis(self) -> int:
        return self._budget - (len(self._log.calls) - self._start) * self._ms_per_modify


@dataclass(frozen=True)
class Fired:
    name: str
    schedule: dict[str, Any]
    event: dict[str, Any]


def pending_schedules() -> list[str]:
    return [item["Name"] for item in boto3.client("scheduler").list_schedules(GroupName=GROUP)["Schedules"]]


def fire_next() -> Fired | None:
    """The one pending continuation, read through the Scheduler API and deleted (as AWS does after it fires)."""
    names = pending_schedules()
    assert len(names) <= 1, f"more than one continuation pending: {names}"
    if not names:
        return None
    scheduler = boto3.client("scheduler")
    schedule = scheduler.get_schedule(Name=names[0], GroupName=GROUP)
    scheduler.delete_schedule(Name=names[0], GroupName=GROUP)
    return Fired(name=names[0], schedule=schedule, event=json.loads(schedule["Target"]["Input"]))


def saved_sweep() -> dict[str, Any] | None:
    """The sweep state object, decoded (None when there is none)."""
    import gzip

    s3 = boto3.client("s3")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    if not keys:
        return None
    assert keys == ["sweeps/active.json.gz"], keys
    obj = s3.get_object(Bucket=BUCKET, Key=keys[0])
    assert obj["ServerSideEncryption"] == "AES256"
    state: dict[str, Any] = json.loads(gzip.decompress(obj["Body"].read()))
    return state

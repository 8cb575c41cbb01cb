"""Shared fixtures: a clean AWS-ish environment for every test, moto taught what it lacks, Lambda contexts,
the report topic with a queue subscribed, and the real payloads from ../shared/aws-samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from emulator import ACCOUNT, REGION
from emulator.moto_ext import teach_moto
from imds_enforcer.aws import clients, secrets
from imds_enforcer.domain.settings import Settings
from tests.support.aws import ReportInbox, make_inbox
from tests.support.context import FakeLambdaContext

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real credentials, no endpoint override, no leftover settings; fresh clients each test."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ImdsEnforcer")
    clients.reset_clients()
    secrets.reset_webhook_urls()
    yield
    clients.reset_clients()
    secrets.reset_webhook_urls()


@pytest.fixture
def aws() -> Iterator[None]:
    """moto in-process, with the AWS behaviour it lacks taught in (never bent into the product code)."""
    from moto import mock_aws

    teach_moto()
    with mock_aws():
        yield


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext(account=ACCOUNT, region=REGION)


@pytest.fixture
def inbox(aws: None, monkeypatch: pytest.MonkeyPatch) -> ReportInbox:
    """The report topic, a queue subscribed to it, and REPORT_TOPIC_ARN pointing at it."""
    box = make_inbox()
    monkeypatch.setenv("REPORT_TOPIC_ARN", box.topic_arn)
    return box


SAMPLES = ROOT.parent / "shared" / "aws-samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"real AWS payloads not present at {SAMPLES} (they live in ../shared/aws-samples beside the repo)")
    return SAMPLES


@pytest.fixture
def retry_delays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Real retries, without the real back-off sleeps: records each retry's attempt number instead."""
    attempts: list[int] = []

    def no_delay(self: ExponentialBackoff, context: Any) -> float:
        attempts.append(context.attempt_number)
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", no_delay)
    return attempts

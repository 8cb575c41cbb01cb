"""boto3 clients, created lazily (nothing talks to AWS at import) and cached per container.

Clients honour AWS_ENDPOINT_URL, so the same code runs against AWS, moto in-process or a moto server.
Tests call `reset_clients()` after changing the environment.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_ssm import SSMClient

# Standard retries back off on throttling (RequestLimitExceeded, Throttling) with jitter: up to 5 retries, 6 sends.
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    user_agent_appid="imds-enforcer",  # type: ignore[call-arg]  # botocore-stubs lag botocore here
)


@functools.cache
def _session() -> boto3.session.Session:
    # One session: each new one reloads botocore's endpoint and service data (~170 ms per client measured).
    return boto3.session.Session()


@functools.cache
def _client(service: str) -> Any:
    return _session().client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]


def ec2() -> EC2Client:
    client: EC2Client = _client("ec2")
    return client


def autoscaling() -> AutoScalingClient:
    client: AutoScalingClient = _client("autoscaling")
    return client


def cloudwatch() -> CloudWatchClient:
    client: CloudWatchClient = _client("cloudwatch")
    return client


def dynamodb() -> DynamoDBClient:
    client: DynamoDBClient = _client("dynamodb")
    return client


def sns() -> SNSClient:
    client: SNSClient = _client("sns")
    return client


def ssm() -> SSMClient:
    client: SSMClient = _client("ssm")
    return client


def secretsmanager() -> SecretsManagerClient:
    client: SecretsManagerClient = _client("secretsmanager")
    return client


def reset_clients() -> None:
    """Forget the session and clients (tests, and the CLI moving between regions, call this)."""
    _client.cache_clear()
    _session.cache_clear()

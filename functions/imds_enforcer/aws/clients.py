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
    from mypy_boto3_batch import BatchClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_elasticbeanstalk import ElasticBeanstalkClient
    from mypy_boto3_emr import EMRClient
    from mypy_boto3_lightsail import LightsailClient
    from mypy_boto3_sagemaker import SageMakerClient
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


def secretsmanager() -> SecretsManagerClient:
    client: SecretsManagerClient = _client("secretsmanager")
    return client


# The IMDS doors outside EC2 instances, and SSM for the caller analysis.


def sagemaker() -> SageMakerClient:
    client: SageMakerClient = _client("sagemaker")
    return client


def lightsail() -> LightsailClient:
    client: LightsailClient = _client("lightsail")
    return client


def elasticbeanstalk() -> ElasticBeanstalkClient:
    client: ElasticBeanstalkClient = _client("elasticbeanstalk")
    return client


def batch() -> BatchClient:
    client: BatchClient = _client("batch")
    return client


def eks() -> EKSClient:
    client: EKSClient = _client("eks")
    return client


def ecs() -> ECSClient:
    client: ECSClient = _client("ecs")
    return client


def emr() -> EMRClient:
    client: EMRClient = _client("emr")
    return client


def ssm() -> SSMClient:
    client: SSMClient = _client("ssm")
    return client


def available_regions(service: str) -> list[str]:
    """The regions botocore's own endpoint data lists for a service (no network call)."""
    regions: list[str] = _session().get_available_regions(service)
    return regions


def reset_clients() -> None:
    """Forget the session and clients (tests, and the CLI moving between regions, call this)."""
    _client.cache_clear()
    _session.cache_clear()

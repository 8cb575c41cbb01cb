"""boto3 clients, created lazily (nothing talks to AWS at import) and cached per container.

Clients honour AWS_ENDPOINT_URL, so the same code runs against AWS, moto in-process or a moto server.
Tests call `reset_clients()` after changing the environment.

A caller that works on several accounts or regions at once in one process (the CLI's organization audit, one
account-region per worker thread) wraps each unit of work in `session_scope(session)`: inside it, and only in that
thread (a context variable), every adapter's client comes from that session, cached for the scope's lifetime. Outside
any scope (the Lambdas) nothing changes: one default session, one cached client per service.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
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
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sagemaker import SageMakerClient
    from mypy_boto3_scheduler import EventBridgeSchedulerClient
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
# ModifyInstanceMetadataOptions, paced by workflows/pacing.Pacer: one retry absorbs a lone transient error (a 5xx, a
# dropped connection, one throttle), and a throttle that persists reaches the pacer at once, which then slows down
# (AIMD), instead of botocore sleeping through 5 retries on its own backoff while the pacer keeps its old rate. Its own
# client also gives it its own retry quota.
MODIFY_RETRY_CONFIG = RETRY_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 2}))
# The codes AWS uses for "slow down" (EC2 answers RequestLimitExceeded).
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "EC2ThrottledException"})


class ThrottleLog:
    """Counts every throttled response the paced client receives, the one its retry absorbs included, so the pacer
    learns from each of them (botocore emits needs-retry for every attempt, retried or not)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, response: Any = None, **_: Any) -> None:
        if response is not None and response[1].get("Error", {}).get("Code") in THROTTLE_CODES:
            self.count += 1


PACED_THROTTLES = ThrottleLog()


@dataclass
class _Scope:
    """An explicit session (credentials and region) and the clients made from it so far."""

    session: boto3.session.Session
    endpoint_url: str | None
    clients: dict[tuple[str, str | None, bool], Any] = field(default_factory=dict)


# Context-local: a worker thread starts with no scope (threads do not inherit the context), so a scope set in one
# thread is never seen by another.
_scope: ContextVar[_Scope | None] = ContextVar("imds_enforcer_client_scope", default=None)


@contextmanager
def session_scope(session: boto3.session.Session, *, endpoint_url: str | None = None) -> Iterator[None]:
    """Inside the block, in this thread only, every client comes from `session` (and `endpoint_url` when given;
    otherwise AWS_ENDPOINT_URL as usual). The session must not be shared with another thread (boto3 sessions are
    not thread-safe); the clients made from it are dropped when the block ends."""
    token = _scope.set(_Scope(session=session, endpoint_url=endpoint_url))
    try:
        yield
    finally:
        _scope.reset(token)


@functools.cache
def _session() -> boto3.session.Session:
    # One session: each new one reloads botocore's endpoint and service data (~170 ms per client measured).
    return boto3.session.Session()


def _new_client(
    session: boto3.session.Session, service: str, region: str | None, endpoint_url: str | None, paced: bool
) -> Any:
    config = MODIFY_RETRY_CONFIG if paced else RETRY_CONFIG
    client = session.client(  # type: ignore[call-overload]
        service, region_name=region, endpoint_url=endpoint_url, config=config
    )
    if paced:
        client.meta.events.register(f"needs-retry.{service}", PACED_THROTTLES)
    return client


@functools.cache
def _default_client(service: str, region: str | None, paced: bool) -> Any:
    return _new_client(_session(), service, region, None, paced)


def _client(service: str, region: str | None = None, *, paced: bool = False) -> Any:
    """`region` None: the session's region (the function's own)."""
    scope = _scope.get()
    if scope is None:
        return _default_client(service, region, paced)
    key = (service, region, paced)
    if key not in scope.clients:
        scope.clients[key] = _new_client(scope.session, service, region, scope.endpoint_url, paced)
    return scope.clients[key]


def ec2() -> EC2Client:
    client: EC2Client = _client("ec2")
    return client


def ec2_paced() -> EC2Client:
    """The EC2 client for the paced modifies (one retry: see MODIFY_RETRY_CONFIG)."""
    client: EC2Client = _client("ec2", paced=True)
    return client


def s3() -> S3Client:
    client: S3Client = _client("s3")
    return client


def scheduler() -> EventBridgeSchedulerClient:
    client: EventBridgeSchedulerClient = _client("scheduler")
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


def sns(region: str | None = None) -> SNSClient:
    """The function's own region's SNS, or `region`'s: SNS serves a topic only from the topic's own region."""
    client: SNSClient = _client("sns", region)
    return client


def secretsmanager() -> SecretsManagerClient:
    client: SecretsManagerClient = _client("secretsmanager")
    return client


# The IMDS doors outside EC2 instances.


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
    _default_client.cache_clear()
    _session.cache_clear()

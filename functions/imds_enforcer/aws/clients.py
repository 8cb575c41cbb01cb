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
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient

# Standard retries back off on throttling (RequestLimitExceeded, Throttling) with jitter: up to 5 retries, 6 sends.
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    user_agent_appid="imds-enforcer",  # type: ignore[call-arg]  # botocore-stubs lag botocore here
)


@dataclass
class _Scope:
    """An explicit session (credentials and region) and the clients made from it so far."""

    session: boto3.session.Session
    endpoint_url: str | None
    clients: dict[tuple[str, str | None], Any] = field(default_factory=dict)


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


@functools.cache
def _default_client(service: str, region: str | None) -> Any:
    return _session().client(service, region_name=region, config=RETRY_CONFIG)  # type: ignore[call-overload]


def _client(service: str, region: str | None = None) -> Any:
    """`region` None: the session's region (the function's own)."""
    scope = _scope.get()
    if scope is None:
        return _default_client(service, region)
    key = (service, region)
    if key not in scope.clients:
        scope.clients[key] = scope.session.client(  # type: ignore[call-overload]
            service, region_name=region, endpoint_url=scope.endpoint_url, config=RETRY_CONFIG
        )
    return scope.clients[key]


def ec2() -> EC2Client:
    client: EC2Client = _client("ec2")
    return client


def autoscaling() -> AutoScalingClient:
    client: AutoScalingClient = _client("autoscaling")
    return client


def cloudwatch() -> CloudWatchClient:
    client: CloudWatchClient = _client("cloudwatch")
    return client


def sns(region: str | None = None) -> SNSClient:
    """The function's own region's SNS, or `region`'s: SNS serves a topic only from the topic's own region."""
    client: SNSClient = _client("sns", region)
    return client


def secretsmanager() -> SecretsManagerClient:
    client: SecretsManagerClient = _client("secretsmanager")
    return client


def reset_clients() -> None:
    """Forget the session and clients (tests, and the CLI moving between regions, call this)."""
    _default_client.cache_clear()
    _session.cache_clear()

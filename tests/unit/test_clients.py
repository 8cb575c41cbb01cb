"""The product's client factory: cached per container by default, per thread inside a `session_scope`.

No AWS call is made: creating a client reads only botocore's bundled data.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3

from emulator import REGION
from imds_enforcer.aws import clients


def _access_key(client: Any) -> str:
    return str(client._request_signer._credentials.access_key)


def _session(region: str, key: str) -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id=key, aws_secret_access_key="secret", region_name=region)


def test_without_a_scope_each_client_is_made_once_from_the_environment() -> None:
    # The Lambda path: lazy, cached, the runtime's region and credentials
    first = clients.ec2()

    assert clients.ec2() is first
    assert first.meta.region_name == REGION
    assert _access_key(first) == "testing"
    assert clients.sns().meta.region_name == REGION


def test_an_explicit_region_gets_its_own_cached_client() -> None:
    # SNS serves a topic only from its own region: the central topic's client is that region's
    central = clients.sns("eu-west-1")

    assert central.meta.region_name == "eu-west-1"
    assert clients.sns("eu-west-1") is central
    assert clients.sns() is not central


def test_a_scope_points_every_client_at_its_session_and_ends_with_the_block() -> None:
    default = clients.ec2()

    with clients.session_scope(_session("ap-southeast-2", "member-key"), endpoint_url="http://127.0.0.1:9"):
        scoped = clients.ec2()
        assert scoped is not default
        assert clients.ec2() is scoped  # cached for the scope's lifetime
        assert scoped.meta.region_name == "ap-southeast-2"
        assert _access_key(scoped) == "member-key"
        assert scoped.meta.endpoint_url == "http://127.0.0.1:9"
        assert clients.cloudwatch().meta.region_name == "ap-southeast-2"

    assert clients.ec2() is default


def test_scopes_in_different_threads_never_see_each_other() -> None:
    # Given two workers, each in its own account-region, running at the same time
    seen: dict[str, tuple[str, str]] = {}
    both_inside = threading.Barrier(3)

    def worker(name: str, region: str) -> None:
        with clients.session_scope(_session(region, f"key-{name}")):
            both_inside.wait(timeout=10)  # all scopes are open at once
            client = clients.ec2()
            seen[name] = (client.meta.region_name, _access_key(client))
            both_inside.wait(timeout=10)

    threads = [
        threading.Thread(target=worker, args=("a", "eu-west-1")),
        threading.Thread(target=worker, args=("b", "us-west-2")),
    ]
    for thread in threads:
        thread.start()

    # When the main thread asks for a client while both scopes are open
    both_inside.wait(timeout=10)
    main_client = clients.ec2()
    both_inside.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=10)

    # Then each thread had its own session's client, and the main thread the default one
    assert seen == {"a": ("eu-west-1", "key-a"), "b": ("us-west-2", "key-b")}
    assert (main_client.meta.region_name, _access_key(main_client)) == (REGION, "testing")


def test_reset_forgets_the_default_clients() -> None:
    first = clients.ec2()

    clients.reset_clients()

    assert clients.ec2() is not first

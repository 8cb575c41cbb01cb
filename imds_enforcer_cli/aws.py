"""Where the CLI runs: the caller's account, the regions, and the environment the product's clients read.

The product's clients (`imds_enforcer.aws.clients`) come from the default chain and read the region and
AWS_ENDPOINT_URL from the environment, cached per service. The CLI therefore points them at one region at a
time by setting those variables and resetting the cache, and restores both afterwards, so that a caller in the
same process (the demo, the tests) finds its environment as it left it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import boto3
from botocore.config import Config

from imds_enforcer.aws import clients
from imds_enforcer_cli.errors import CliError, ExitCode

DEFAULT_HOME_REGION = "us-east-1"
_REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
# The preflight call fails fast: one send, short timeouts. The product's clients retry 5 times with backoff, which
# is right for a sweep and wrong for "is anyone there": an unreachable endpoint would take half a minute to report.
PREFLIGHT_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=5,
    read_timeout=15,
)


def new_session() -> boto3.session.Session:
    return boto3.session.Session()


def home_region(session: boto3.session.Session) -> str | None:
    return session.region_name or None


def known_regions(session: boto3.session.Session) -> set[str]:
    """Every region botocore knows an EC2 endpoint for, in every partition (aws, aws-cn, aws-us-gov, ...)."""
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return regions


def check_regions(session: boto3.session.Session, requested: Sequence[str]) -> list[str]:
    """The requested regions, deduplicated in order; an unknown name is a usage error, before any AWS call."""
    known = known_regions(session)
    unknown = [region for region in requested if region not in known]
    if unknown:
        raise CliError(
            f"unknown region {', '.join(repr(region) for region in unknown)}: EC2 has no such region "
            "(e.g. us-east-1, eu-west-1; `aws ec2 describe-regions` lists yours)",
            ExitCode.USAGE,
        )
    return list(dict.fromkeys(requested))


def resolve_regions(
    session: boto3.session.Session,
    *,
    regions: Sequence[str] = (),
    all_regions: bool = False,
    endpoint_url: str | None = None,
) -> list[str]:
    """`--region` values, or the opted-in regions (`--all-regions`), or the session's region."""
    if all_regions:
        home = home_region(session) or DEFAULT_HOME_REGION
        ec2 = session.client("ec2", region_name=home, endpoint_url=endpoint_url, config=PREFLIGHT_CONFIG)
        # Without AllRegions, DescribeRegions lists only the regions enabled for the account (opted in, or
        # needing no opt-in): the others would answer every call with AuthFailure.
        found = sorted(item["RegionName"] for item in ec2.describe_regions().get("Regions", []) if "RegionName" in item)
        if not found:
            raise CliError("DescribeRegions listed no enabled region", ExitCode.AWS)
        return found
    if regions:
        return check_regions(session, regions)
    session_region = home_region(session)
    if session_region is None:
        raise CliError("no region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION", ExitCode.USAGE)
    return check_regions(session, [session_region])


def caller_account(session: boto3.session.Session, *, region: str, endpoint_url: str | None = None) -> str:
    """The account the credentials belong to. The first AWS call: it proves credentials and reachability fast."""
    sts = session.client("sts", region_name=region, endpoint_url=endpoint_url, config=PREFLIGHT_CONFIG)
    return str(sts.get_caller_identity()["Account"])


def caller_identity(session: boto3.session.Session, *, region: str, endpoint_url: str | None = None) -> tuple[str, str]:
    """(account, partition) of the credentials: the partition (from the caller's ARN) names the roles to assume."""
    sts = session.client("sts", region_name=region, endpoint_url=endpoint_url, config=PREFLIGHT_CONFIG)
    identity = sts.get_caller_identity()
    partition = str(identity.get("Arn", "arn:aws:")).split(":")[1] or "aws"
    return str(identity["Account"]), partition


@contextmanager
def aws_scope(region: str, *, endpoint_url: str | None = None) -> Iterator[None]:
    """Point the product's clients at `region` (and `endpoint_url`) for the duration of the block."""
    names = (*_REGION_VARIABLES, "AWS_ENDPOINT_URL")
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in _REGION_VARIABLES:
            os.environ[name] = region
        if endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = endpoint_url
        clients.reset_clients()
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        clients.reset_clients()


@contextmanager
def in_region(region: str) -> Iterator[None]:
    """Name the region on any failure inside (a PEP 678 note), so the one-line error says where it happened."""
    try:
        yield
    except Exception as error:
        error.add_note(f"region {region}")
        raise

"""The organization as the audit sees it: its accounts (by OU, recursively) and a way into each of them.

Organizations is read from the caller's session (the management account, or a delegated administrator). Each member
account is entered through the read-only role the StackSet deploys there (`imds-enforcer-audit` by default); the
caller's own account is read with the caller's own credentials (StackSets never deploy to the management account).
Every account-region gets its own boto3 session, made in the worker thread that uses it (sessions are not
thread-safe), sharing one botocore data loader so that a session costs ~50 ms instead of ~170 ms.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config

from imds_enforcer.domain.organization import ROOT_ID, role_arn
from imds_enforcer_cli.errors import CliError, ExitCode

if TYPE_CHECKING:
    from botocore.loaders import Loader

# Organizations is one global endpoint with modest rate limits: standard retries ride out its throttling.
ORGANIZATIONS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
ROOT_NAME = "Root"
SESSION_NAME = "imds-enforcer-audit"
ROLE_SESSION_SECONDS = 3600
# Assume again when the credentials have less than this left: an account-region must not run out mid-audit.
REFRESH_MARGIN = timedelta(minutes=10)
NOT_FOUND_CODES = frozenset(
    {"OrganizationalUnitNotFoundException", "ParentNotFoundException", "ChildNotFoundException"}
)


@dataclass(frozen=True, slots=True)
class OrgAccount:
    """A member account and the OU (or root) it sits in directly."""

    id: str
    name: str
    status: str  # ACTIVE, SUSPENDED, PENDING_CLOSURE
    ou_id: str
    ou_name: str

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires_at: datetime | None = None


def _organizations(session: boto3.session.Session, endpoint_url: str | None) -> Any:
    # A global service: any region reaches it; the session's, else us-east-1 (where the aws partition serves it).
    return session.client(
        "organizations",
        region_name=session.region_name or "us-east-1",
        endpoint_url=endpoint_url,
        config=ORGANIZATIONS_CONFIG,
    )


def list_accounts(
    session: boto3.session.Session, *, ou_ids: Sequence[str] = (), endpoint_url: str | None = None
) -> list[OrgAccount]:
    """Every account under the given OUs or roots, recursively (default: the whole organization, from its root),
    each with the OU it sits in directly. Listed once each, sorted by name then id.

    Raises CliError (usage) for an OU that is not in the organization, and botocore's errors as they come (not in
    an organization, access denied: not the management account or a delegated administrator).
    """
    organizations = _organizations(session, endpoint_url)
    if ou_ids:
        starts = [(ou_id, _unit_name(organizations, ou_id)) for ou_id in dict.fromkeys(ou_ids)]
    else:
        roots = organizations.get_paginator("list_roots").paginate()
        starts = [(root["Id"], root.get("Name", ROOT_NAME)) for page in roots for root in page.get("Roots", [])]
    found: dict[str, OrgAccount] = {}
    pending = list(starts)
    seen: set[str] = set()
    while pending:
        parent_id, parent_name = pending.pop(0)
        if parent_id in seen:
            continue  # a nested OU given next to its parent
        seen.add(parent_id)
        accounts = organizations.get_paginator("list_accounts_for_parent").paginate(ParentId=parent_id)
        for page in accounts:
            for item in page.get("Accounts", []):
                found.setdefault(
                    item["Id"],
                    OrgAccount(
                        id=item["Id"],
                        name=item.get("Name", ""),
                        status=str(item.get("Status", "ACTIVE")),
                        ou_id=parent_id,
                        ou_name=parent_name,
                    ),
                )
        units = organizations.get_paginator("list_organizational_units_for_parent").paginate(ParentId=parent_id)
        pending.extend(
            (unit["Id"], unit.get("Name", "")) for page in units for unit in page.get("OrganizationalUnits", [])
        )
    return sorted(found.values(), key=lambda account: (account.name.lower(), account.id))


def _unit_name(organizations: Any, unit_id: str) -> str:
    from botocore.exceptions import ClientError

    if ROOT_ID.match(unit_id):
        roots = organizations.list_roots().get("Roots", [])
        for root in roots:
            if root["Id"] == unit_id:
                return str(root.get("Name", ROOT_NAME))
        raise CliError(f"--ou {unit_id}: no such root in this organization", ExitCode.USAGE)
    try:
        unit = organizations.describe_organizational_unit(OrganizationalUnitId=unit_id)["OrganizationalUnit"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
            raise CliError(f"--ou {unit_id}: no such OU in this organization", ExitCode.USAGE) from None
        raise
    return str(unit.get("Name", ""))


@functools.cache
def _shared_loader() -> Loader:
    # Service models are read-only data: one loader for every session saves reparsing them per account-region.
    loader: Loader = botocore.session.get_session().get_component("data_loader")
    return loader


def session_for(credentials: Credentials | None, region: str) -> boto3.session.Session:
    """A new session in `region` with these credentials (None: the default chain). One per worker task."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())
    if credentials is None:
        return boto3.session.Session(region_name=region, botocore_session=core)
    return boto3.session.Session(
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        region_name=region,
        botocore_session=core,
    )


def caller_credentials(session: boto3.session.Session) -> Credentials | None:
    """The caller's own credentials, frozen, for reading the caller's own account; None when there are none."""
    found = session.get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        return None
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class RoleCredentials:
    """Credentials of a role in another account, assumed on first use and again when they run low. Thread-safe: the
    workers auditing the account's regions share one instance (one AssumeRole per account, not per region)."""

    def __init__(self, sts: Any, *, account: str, role_name: str, partition: str) -> None:
        self._sts = sts  # a boto3 client: safe to share between threads
        self.role_arn = role_arn(partition=partition, account=account, role_name=role_name)
        self._lock = threading.Lock()
        self._current: Credentials | None = None

    def get(self) -> Credentials:
        with self._lock:
            current = self._current
            if current is None or (
                current.expires_at is not None and current.expires_at - datetime.now(UTC) < REFRESH_MARGIN
            ):
                current = self._current = self._assume()
            return current

    def _assume(self) -> Credentials:
        answer = self._sts.assume_role(
            RoleArn=self.role_arn, RoleSessionName=SESSION_NAME, DurationSeconds=ROLE_SESSION_SECONDS
        )["Credentials"]
        expires = answer.get("Expiration")
        return Credentials(
            access_key_id=answer["AccessKeyId"],
            secret_access_key=answer["SecretAccessKey"],
            session_token=answer["SessionToken"],
            expires_at=expires if isinstance(expires, datetime) else None,
        )

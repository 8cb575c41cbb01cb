"""An AWS Organization in the emulator, built with real boto3 calls: OUs, member accounts, and what the StackSet
would have put in each member (the audit role). Shared by the tests and the organization benchmark.

moto keeps one backend per account id; credentials from `sts:AssumeRole` into a member's role are served by that
member's backends. `create_account` gives every new account the `OrganizationAccountAccessRole` (trusting the
management account), as AWS does, so `member_session` can seed any member. Never set MOTO_ACCOUNT_ID: it would pin
every request to one account.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import boto3

from emulator import ACCOUNT, REGION
from imds_enforcer.domain.organization import AUDIT_READ_ACTIONS, AUDIT_ROLE_NAME
from imds_enforcer_cli.organization import Credentials, session_for

ADMIN_ROLE = "OrganizationAccountAccessRole"


@dataclass(frozen=True)
class Member:
    account_id: str
    name: str
    ou_id: str


@dataclass
class Organization:
    id: str
    root_id: str
    management_account: str = ACCOUNT
    units: dict[str, str] = field(default_factory=dict)  # OU name -> id
    members: list[Member] = field(default_factory=list)

    def add_unit(self, name: str, *, parent: str | None = None) -> str:
        """An OU under `parent` (an OU name, or None for the root); returns its id."""
        parent_id = self.root_id if parent is None else self.units[parent]
        unit = boto3.client("organizations").create_organizational_unit(ParentId=parent_id, Name=name)
        self.units[name] = unit["OrganizationalUnit"]["Id"]
        return self.units[name]

    def add_member(self, name: str, *, unit: str | None = None, audit_role: bool = True) -> Member:
        """A new account, moved into `unit` (an OU name; None: stays under the root), with the audit role the
        StackSet would deploy unless `audit_role` is False (an account the StackSet has not reached)."""
        organizations = boto3.client("organizations")
        status = organizations.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]
        account_id = status["AccountId"]
        parent = self.root_id if unit is None else self.units[unit]
        if unit is not None:
            organizations.move_account(AccountId=account_id, SourceParentId=self.root_id, DestinationParentId=parent)
        if audit_role:
            install_audit_role(account_id, trusted_account=self.management_account)
        member = Member(account_id=account_id, name=name, ou_id=parent)
        self.members.append(member)
        return member


def create_organization() -> Organization:
    """The caller's account (moto's default) becomes the management account of a new organization."""
    organizations = boto3.client("organizations")
    org_id = organizations.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    root_id = organizations.list_roots()["Roots"][0]["Id"]
    return Organization(id=org_id, root_id=root_id)


def member_session(account_id: str, region: str = REGION, *, role_name: str = ADMIN_ROLE) -> boto3.session.Session:
    """A session inside a member account (its administrator role by default), as a platform team would have.

    Sessions share botocore's data loader (the CLI's own factory): a fresh session would reparse every service
    model, ~0.1 s a client. Not cached across calls: moto forgets the credentials when it is reset.
    """
    answer = boto3.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/{role_name}", RoleSessionName="emulator-seed"
    )["Credentials"]
    credentials = Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])
    return session_for(credentials, region)


def install_audit_role(
    account_id: str,
    *,
    trusted_account: str = ACCOUNT,
    role_name: str = AUDIT_ROLE_NAME,
    actions: Sequence[str] = AUDIT_READ_ACTIONS,
) -> None:
    """The member template's audit role: trusts the management account, may read what the audit reads."""
    iam = member_session(account_id).client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{trusted_account}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}
    iam.put_role_policy(RoleName=role_name, PolicyName="read-imds-posture", PolicyDocument=json.dumps(policy))

"""IAM and SCP guardrails: the policy documents that lock the door once the fleet is on IMDSv2.

AWS's transition path ends with condition keys that stop anyone from going back: ``ec2:MetadataHttpTokens``
(String), ``ec2:MetadataHttpEndpoint`` (String), ``ec2:MetadataHttpPutResponseHopLimit`` (Numeric), all evaluated on
the ``instance`` resource of ``RunInstances`` and ``ModifyInstanceMetadataOptions``, and ``ec2:RoleDelivery``
(Numeric: 1.0 for role credentials fetched over IMDSv1, 2.0 over IMDSv2), carried by every request signed with
EC2 role credentials. Every statement here is a Deny: a guardrail takes nothing away that an Allow elsewhere
did not grant, and grants nothing.

Two ways to apply the same statements, with different scope:

- **SCP** (``scp_document``): attached to an account, OU or the organization root, it binds every principal in
  the accounts below, administrators and the account's root user included (only the management account and
  service-linked roles are outside SCPs). This is the door AWS recommends closing last.
- **IAM managed policy** (``iam_policy_document``): binds only the users, groups and roles it is attached to; a
  Deny in an identity policy is evaluated the same way, so it suits accounts without AWS Organizations, or a
  trial on a few roles before the SCP goes on.

Who is exempt, and why nobody else can become exempt. Every statement spares the service's own roles (the usage
gate's and the rejection watch's opt-in rollback sets ``HttpTokens=optional`` on an instance whose IMDSv1 callers
broke) and the break-glass roles the operator names, by ``aws:PrincipalArn``. An IAM path alone is no boundary: anyone
allowed iam:CreateRole chooses it. So the service's roles have fixed names (``imds-enforcer-<function>-<region>``,
under ``/imds-enforcer/``, see ``service_role_name``), and the exemption names them:

- exactly (``service_role_arns``: the stack passes the ARNs of its own roles in every configured region), or
- for an SCP across many accounts, as the pattern ``arn:<partition>:iam::*:role/imds-enforcer/imds-enforcer-*``,
  with the ``ProtectServiceRoles`` statement: creating, changing, passing or deleting a role under that path, changing
  the code or configuration of the service's functions (``imds-enforcer-*``), or changing the deployment roles
  themselves, is denied to everyone but the deployment roles (``deployment_role_arns``; by default the execution
  roles of service-managed StackSets, ``stacksets-exec-*``, which only StackSets' service-linked role creates, and
  SCPs do not bind service-linked roles). A role someone else creates under the same path or with the same name
  pattern is then refused at creation, and is never exempt.

Condition keys of ``ModifyInstanceMetadataOptions`` (Service Authorization Reference, Amazon EC2, "Actions defined by
Amazon EC2"): the requested values are ``ec2:Attribute/${AttributeName}`` (``ec2:Attribute/HttpTokens``, as AWS's
example "Deny opt-out of IMDSv2" uses, with a ``Null`` guard); ``ec2:MetadataHttpTokens`` and its siblings are
keys of the *instance* resource on that action (what the instance has, not what the call asks), so a Deny on them
there would refuse changes by the instance's current state. On ``RunInstances`` the instance does not exist yet and
``ec2:Metadata*`` are the requested values (AWS's "Require the use of IMDSv2" example). Pure functions: no boto3,
no environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imds_enforcer.domain.settings import SERVICE_ROLE_PATH

# The service's roles and functions have fixed names, so the guardrails can name them (see the module docstring).
SERVICE_NAME_PREFIX = "imds-enforcer-"
# The functions whose roles call EC2 (the Slack notifier's does not, and is not exempt).
EC2_FUNCTIONS = ("launch-watch", "usage-gate", "rejection-watch")
# Service-managed StackSets deploy through these roles, which StackSets' service-linked role creates in each account.
DEFAULT_DEPLOYMENT_ROLE_ARNS = ("arn:aws:iam::*:role/stacksets-exec-*",)
# What creates, changes, hands over or removes a role (or its trust, policies, boundary, tags), and what changes the
# code a function runs: each could make someone else's code run as an exempt role.
ROLE_CHANGES = (
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
    "iam:UpdateAssumeRolePolicy",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:AttachRolePolicy",
    "iam:DetachRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:DeleteRolePermissionsBoundary",
    "iam:TagRole",
    "iam:UntagRole",
    "iam:PassRole",
)
FUNCTION_CHANGES = (
    "lambda:CreateFunction",
    "lambda:UpdateFunctionCode",
    "lambda:UpdateFunctionConfiguration",
    "lambda:DeleteFunction",
)


def service_role_name(function: str, region: str) -> str:
    """The fixed name of one of the service's roles (64 characters at most, as IAM allows)."""
    return f"{SERVICE_NAME_PREFIX}{function}-{region}"[:64]


def service_function_name(function: str) -> str:
    """The fixed name of one of the service's functions (one per region, so the region is not in it)."""
    return f"{SERVICE_NAME_PREFIX}{function}"


def service_role_arns(*, partition: str, account: str, regions: Sequence[str]) -> tuple[str, ...]:
    """The exact ARNs of the service's EC2-calling roles in these regions of one account."""
    return tuple(
        f"arn:{partition}:iam::{account}:role{SERVICE_ROLE_PATH}{service_role_name(function, region)}"
        for region in regions
        for function in EC2_FUNCTIONS
    )


POLICY_VERSION = "2012-10-17"
# Organizations counts every character of an SCP, whitespace included; IAM counts a managed policy without it.
SCP_MAX_CHARACTERS = 5120
MANAGED_POLICY_MAX_CHARACTERS = 6144
# The hop limit container hosts need under IMDSv2 (one hop for the instance, one for the container bridge).
DEFAULT_MAX_HOP_LIMIT = 2

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
# A role ARN, or an ArnLike pattern for one: the account may be `*` (one SCP for an OU of many accounts) and the
# path/name may hold `*`/`?` (IAM Identity Center roles end in a random suffix: AWSReservedSSO_BreakGlass_*).
_ROLE_ARN = re.compile(r"^arn:(?P<partition>aws|aws-cn|aws-us-gov):iam::(?:\d{12}|\*):role/(?P<name>[\w+=,.@/*?-]+)$")
# One of the service's roles: under the service's path, with the fixed name prefix (a trailing `*` only in the pattern).
_SERVICE_ROLE_ARN = re.compile(
    r"^arn:(?:aws|aws-cn|aws-us-gov):iam::(?:\d{12}|\*):role"
    + re.escape(SERVICE_ROLE_PATH + SERVICE_NAME_PREFIX)
    + r"(?:[\w+=,.@-]+|\*)$"
)


class GuardrailsError(ValueError):
    """An option is invalid or the document does not fit; the message names the option or the limit."""


class GuardrailOptions(BaseModel):
    """The options of the guardrail documents, validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Container hosts need 2; anything higher lets IMDS answers travel further than the instance's own containers.
    max_hop_limit: Annotated[int, Field(ge=1, le=64)] = DEFAULT_MAX_HOP_LIMIT
    # Break-glass roles (or ArnLike patterns) that the guardrails never stop, besides the service's own roles.
    exempt_principal_arns: tuple[str, ...] = ()
    # The RoleDelivery Deny breaks every instance still fetching credentials over IMDSv1: the last step only.
    include_role_delivery: bool = True
    partition: str = "aws"
    # The service's own roles: exact ARNs (a stack knows them), or empty for the fixed-name pattern in any account.
    service_role_arns: tuple[str, ...] = ()
    # Who may create or change the service's roles and functions (ProtectServiceRoles); empty: no such statement.
    deployment_role_arns: tuple[str, ...] = ()

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, value: str) -> str:
        if value not in PARTITIONS:
            raise ValueError(f"partition {value!r} is not one of {', '.join(PARTITIONS)}")
        return value

    @field_validator("service_role_arns", mode="before")
    @classmethod
    def _service_roles(cls, value: object) -> object:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, Sequence):
            return value
        for arn in value:
            if not (isinstance(arn, str) and _SERVICE_ROLE_ARN.fullmatch(arn)):
                raise ValueError(
                    f"{arn!r} is not one of the service's roles "
                    f"(arn:<partition>:iam::<account>:role{SERVICE_ROLE_PATH}{SERVICE_NAME_PREFIX}<function>-<region>)"
                )
        return tuple(dict.fromkeys(value))

    @field_validator("exempt_principal_arns", "deployment_role_arns", mode="before")
    @classmethod
    def _role_arns(cls, value: object) -> object:
        if isinstance(value, str):
            # A lone string would otherwise be read as a sequence of one-character "ARNs".
            value = (value,)
        if not isinstance(value, Sequence):
            return value
        arns: list[str] = []
        for arn in value:
            match = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
            if match is None:
                raise ValueError(f"{arn!r} is not an IAM role ARN (arn:aws:iam::<account id or *>:role/<path/name>)")
            if not match["name"].strip("*?/"):
                raise ValueError(f"{arn!r} would exempt every role, which switches the guardrails off")
            if arn not in arns:
                arns.append(arn)
        return tuple(arns)

    @classmethod
    def of(
        cls,
        *,
        max_hop_limit: int = DEFAULT_MAX_HOP_LIMIT,
        exempt_principal_arns: Sequence[str] = (),
        include_role_delivery: bool = True,
        partition: str = "aws",
        service_role_arns: Sequence[str] = (),
        deployment_role_arns: Sequence[str] = (),
    ) -> GuardrailOptions:
        """Validate the options; raises GuardrailsError naming the option (and the bad ARN) on a bad value."""
        try:
            return cls.model_validate(
                {
                    "max_hop_limit": max_hop_limit,
                    "exempt_principal_arns": exempt_principal_arns,
                    "include_role_delivery": include_role_delivery,
                    "partition": partition,
                    "service_role_arns": service_role_arns,
                    "deployment_role_arns": deployment_role_arns,
                }
            )
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg'].removeprefix('Value error, ')}"
                for issue in error.errors()
            )
            raise GuardrailsError(f"invalid guardrail option: {problems}") from None

    @property
    def service_role_pattern(self) -> str:
        """The service's own roles in any account, by their fixed path and name prefix (protected: see the module)."""
        return f"arn:{self.partition}:iam::*:role{SERVICE_ROLE_PATH}{SERVICE_NAME_PREFIX}*"

    @property
    def service_roles(self) -> tuple[str, ...]:
        return self.service_role_arns or (self.service_role_pattern,)

    @property
    def instance_arn(self) -> str:
        return f"arn:{self.partition}:ec2:*:*:instance/*"

    def _exemption(self) -> dict[str, Any]:
        """The condition every statement carries: a negated operator over many values is true only when the
        principal matches none of them. A fresh dict each time, so statements share no mutable parts."""
        return {"ArnNotLike": {"aws:PrincipalArn": [*self.service_roles, *self.exempt_principal_arns]}}

    def _protection(self) -> dict[str, Any]:
        """Nobody but the deployment roles creates, changes or passes a role the exemption could name, changes the
        code the service's functions run, or changes the deployment roles themselves."""
        return {
            "Sid": "ProtectServiceRoles",
            "Effect": "Deny",
            "Action": [*ROLE_CHANGES, *FUNCTION_CHANGES],
            "Resource": [
                f"arn:{self.partition}:iam::*:role{SERVICE_ROLE_PATH}*",
                *self.deployment_role_arns,
                f"arn:{self.partition}:lambda:*:*:function:{SERVICE_NAME_PREFIX}*",
            ],
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": list(self.deployment_role_arns)}},
        }

    def statements(self) -> list[dict[str, Any]]:
        """The Deny statements, in the order of the transition path. Each one's conditions are ANDed with the
        exemption, so a request is denied only when it breaks the rule *and* comes from someone not exempt."""
        statements = [
            # Step "require IMDSv2 on new instances": no launch may come up accepting IMDSv1. The Resource is the
            # instance only, because the key exists only there: on the subnet, image, volume... of the same
            # RunInstances call it is absent, StringNotEquals would be true, and every launch would be denied.
            # A launch that turns IMDS off altogether exposes no credentials, so it is let through; the two keys
            # in one operator are ANDed (tokens not required AND endpoint not disabled).
            {
                "Sid": "RequireImdsV2OnLaunch",
                "Effect": "Deny",
                "Action": "ec2:RunInstances",
                "Resource": self.instance_arn,
                "Condition": {
                    "StringNotEquals": {"ec2:MetadataHttpTokens": "required", "ec2:MetadataHttpEndpoint": "disabled"},
                    **self._exemption(),
                },
            },
            # Step "require IMDSv2 on existing instances", kept: nobody sets an enforced instance back to
            # `optional` (except the service's rollback, exempt above). AWS's own example ("Deny opt-out of IMDSv2"):
            # the requested value is ec2:Attribute/HttpTokens, and the Null guard limits the Deny to calls that set
            # HttpTokens at all (a call that omits it leaves the tokens as they are).
            {
                "Sid": "DenyImdsV1OnModify",
                "Effect": "Deny",
                "Action": "ec2:ModifyInstanceMetadataOptions",
                "Resource": self.instance_arn,
                "Condition": {
                    "StringNotEquals": {"ec2:Attribute/HttpTokens": "required"},
                    "Null": {"ec2:Attribute/HttpTokens": "false"},
                    **self._exemption(),
                },
            },
            # Container hosts need hop limit 2 under IMDSv2; a higher one lets a token PUT answer cross more network
            # hops (nested containers, a forwarding proxy), widening what can reach IMDS. At launch the instance's
            # key is the requested value (Numeric; an absent key makes NumericGreaterThan false, so launches that
            # do not set it are not affected). On a modify the request's own attribute is, and the Service
            # Authorization Reference types ec2:Attribute/* as String: so the allowed values are listed, and the
            # Null guard leaves calls that do not set the hop limit alone.
            {
                "Sid": "LimitImdsHopLimitOnLaunch",
                "Effect": "Deny",
                "Action": "ec2:RunInstances",
                "Resource": self.instance_arn,
                "Condition": {
                    "NumericGreaterThan": {"ec2:MetadataHttpPutResponseHopLimit": str(self.max_hop_limit)},
                    **self._exemption(),
                },
            },
            {
                "Sid": "LimitImdsHopLimitOnModify",
                "Effect": "Deny",
                "Action": "ec2:ModifyInstanceMetadataOptions",
                "Resource": self.instance_arn,
                "Condition": {
                    "StringNotEquals": {
                        "ec2:Attribute/HttpPutResponseHopLimit": [str(n) for n in range(1, self.max_hop_limit + 1)]
                    },
                    "Null": {"ec2:Attribute/HttpPutResponseHopLimit": "false"},
                    **self._exemption(),
                },
            },
        ]
        if self.include_role_delivery:
            # The last step: role credentials fetched over IMDSv1 (RoleDelivery 1.0) are useless for any action,
            # so stolen ones from an instance still on `optional` buy nothing. Action "*" as AWS documents it: it
            # is a Deny, it grants nothing. Requests not signed with EC2 role credentials carry no RoleDelivery,
            # and NumericLessThan on an absent key is false, so they are untouched. It breaks any workload still
            # on IMDSv1, so it belongs only after the usage gate reports the fleet clean.
            statements.append(
                {
                    "Sid": "RequireImdsV2RoleCredentials",
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"NumericLessThan": {"ec2:RoleDelivery": "2.0"}, **self._exemption()},
                }
            )
        if self.deployment_role_arns:
            statements.append(self._protection())
        return statements


def guardrail_statements(
    *,
    max_hop_limit: int = DEFAULT_MAX_HOP_LIMIT,
    exempt_principal_arns: Sequence[str] = (),
    include_role_delivery: bool = True,
    partition: str = "aws",
    service_role_arns: Sequence[str] = (),
    deployment_role_arns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The guardrail Deny statements (see ``GuardrailOptions.statements``); raises GuardrailsError on a bad option."""
    return GuardrailOptions.of(
        max_hop_limit=max_hop_limit,
        exempt_principal_arns=exempt_principal_arns,
        include_role_delivery=include_role_delivery,
        partition=partition,
        service_role_arns=service_role_arns,
        deployment_role_arns=deployment_role_arns,
    ).statements()


def iam_policy_document(
    *,
    max_hop_limit: int = DEFAULT_MAX_HOP_LIMIT,
    exempt_principal_arns: Sequence[str] = (),
    include_role_delivery: bool = True,
    partition: str = "aws",
    service_role_arns: Sequence[str] = (),
    deployment_role_arns: Sequence[str] = (),
) -> dict[str, Any]:
    """An identity policy (for a customer managed policy) binding only the principals it is attached to."""
    statements = guardrail_statements(
        max_hop_limit=max_hop_limit,
        exempt_principal_arns=exempt_principal_arns,
        include_role_delivery=include_role_delivery,
        partition=partition,
        service_role_arns=service_role_arns,
        deployment_role_arns=deployment_role_arns,
    )
    return _sized_document(
        statements, MANAGED_POLICY_MAX_CHARACTERS, "the IAM managed policy", "IAM's", exempt_principal_arns
    )


def scp_document(
    *,
    max_hop_limit: int = DEFAULT_MAX_HOP_LIMIT,
    exempt_principal_arns: Sequence[str] = (),
    include_role_delivery: bool = True,
    partition: str = "aws",
    service_role_arns: Sequence[str] = (),
    deployment_role_arns: Sequence[str] = (),
) -> dict[str, Any]:
    """A service control policy for an account, OU or root: binds everyone there, administrators included.

    Deny statements only (a guardrail only takes away; what is allowed stays with the account's other SCPs) and no
    Principal element (SCPs accept none: who is spared is the ``aws:PrincipalArn`` condition on each statement).
    Raises GuardrailsError when the minified document (``minified``, what to upload) exceeds 5,120 characters.
    """
    statements = guardrail_statements(
        max_hop_limit=max_hop_limit,
        exempt_principal_arns=exempt_principal_arns,
        include_role_delivery=include_role_delivery,
        partition=partition,
        service_role_arns=service_role_arns,
        deployment_role_arns=deployment_role_arns,
    )
    return _sized_document(statements, SCP_MAX_CHARACTERS, "the SCP", "AWS Organizations'", exempt_principal_arns)


def _sized_document(
    statements: list[dict[str, Any]], limit: int, what: str, whose: str, exempt_principal_arns: Sequence[str]
) -> dict[str, Any]:
    """The policy document, or GuardrailsError when its minified form (what is uploaded) exceeds `limit`."""
    document = {"Version": POLICY_VERSION, "Statement": statements}
    size = len(minified(document))
    if size > limit:
        raise GuardrailsError(
            f"{what} is {size} characters minified, over {whose} limit of {limit}: "
            f"name fewer exempt_principal_arns ({len(exempt_principal_arns)} given), or one ArnLike pattern for many"
        )
    return document


def minified(document: dict[str, Any]) -> str:
    """The document as uploaded: no whitespace, since Organizations counts every character of an SCP."""
    return json.dumps(document, separators=(",", ":"))

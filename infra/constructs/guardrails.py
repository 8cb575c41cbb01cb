"""The IMDSv2 guardrails as a CDK construct: a customer managed policy, or a service control policy.

Optional and standalone: the documents come from ``imds_enforcer.domain.guardrails`` (the same ones the CLI prints), so
what the stack deploys and what a person pastes into the console cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from aws_cdk import aws_iam as iam
from aws_cdk import aws_organizations as organizations
from constructs import Construct

from imds_enforcer.domain.guardrails import DEFAULT_MAX_HOP_LIMIT, iam_policy_document, scp_document

GuardrailsMode = Literal["iam", "scp"]

# What an SCP can be attached to: the organization root, an OU, or an account (DeployConfig checks with it too).
SCP_TARGET = re.compile(r"^(r-[0-9a-z]{4,32}|ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|\d{12})$")


class GuardrailPolicy(Construct):
    """Deny-only IMDSv2 guardrails, exempting the service's own roles and the given break-glass roles.

    ``service_role_arns``: the service's exact role ARNs (empty: its fixed-name pattern in any account, for an SCP
    across accounts); ``deployment_role_arns``: the only principals that may create or change the service's roles and
    functions (the ``ProtectServiceRoles`` statement; see ``imds_enforcer.domain.guardrails``).

    ``mode="iam"``: ``managed_policy``, to attach to the principals it should bind (only those).
    ``mode="scp"``: ``service_control_policy``, attached to ``scp_target_ids`` (root, OUs, accounts) and binding
    everyone there, administrators included. AWS Organizations accepts it only from the management account (or a
    delegated administrator for policy management), and its name is unique in the organization: deploy it from one
    stack in one region, not from every regional stack.

    ``partition`` is a plain string (``aws``, ``aws-cn``, ``aws-us-gov``), not ``Aws.PARTITION``: the documents
    are built and checked in Python (known partition, size within the limit), where a CloudFormation token is
    only a placeholder string.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        mode: GuardrailsMode,
        max_hop_limit: int = DEFAULT_MAX_HOP_LIMIT,
        break_glass_role_arns: Sequence[str] = (),
        scp_target_ids: Sequence[str] = (),
        include_role_delivery: bool = True,
        partition: str = "aws",
        service_role_arns: Sequence[str] = (),
        deployment_role_arns: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self.managed_policy: iam.ManagedPolicy | None = None
        self.service_control_policy: organizations.CfnPolicy | None = None
        description = (
            "IMDSv2 Enforcer guardrails: deny launching or modifying instances to accept IMDSv1, hop limits above "
            f"{max_hop_limit}" + (", and IMDSv1 role credentials" if include_role_delivery else "")
        )

        if mode == "iam":
            if scp_target_ids:
                # Silently ignoring them would leave someone believing an OU is covered.
                raise ValueError("scp_target_ids: only mode='scp' attaches to targets; an IAM policy has none")
            # No cdk-nag acknowledgement: IAM5 (wildcards) judges Allow statements only, and these are all Deny; the
            # construct test synthesizes with AwsSolutionsChecks so a new finding would fail it.
            self.managed_policy = iam.ManagedPolicy(
                self,
                "Policy",
                description=description,
                document=iam.PolicyDocument.from_json(
                    iam_policy_document(
                        max_hop_limit=max_hop_limit,
                        exempt_principal_arns=break_glass_role_arns,
                        include_role_delivery=include_role_delivery,
                        partition=partition,
                        service_role_arns=service_role_arns,
                        deployment_role_arns=deployment_role_arns,
                    )
                ),
            )
        elif mode == "scp":
            bad = [target for target in scp_target_ids if not SCP_TARGET.fullmatch(target)]
            if bad:
                raise ValueError(
                    f"scp_target_ids: {', '.join(repr(target) for target in bad)} is not a root (r-...), "
                    "OU (ou-...-...) or 12-digit account id"
                )
            self.service_control_policy = organizations.CfnPolicy(
                self,
                "Policy",
                name="imds-enforcer-guardrails",
                description=description,
                type="SERVICE_CONTROL_POLICY",
                # A JSON object, not a string: CloudFormation can detect drift only on an object. scp_document
                # has already checked that its minified form fits Organizations' 5,120 characters.
                content=scp_document(
                    max_hop_limit=max_hop_limit,
                    exempt_principal_arns=break_glass_role_arns,
                    include_role_delivery=include_role_delivery,
                    partition=partition,
                    service_role_arns=service_role_arns,
                    deployment_role_arns=deployment_role_arns,
                ),
                target_ids=list(scp_target_ids),
            )
        else:
            raise ValueError(f"mode: {mode!r} is not 'iam' or 'scp'")

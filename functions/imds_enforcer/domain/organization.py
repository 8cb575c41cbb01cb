"""Names an AWS Organization deployment agrees on: the StackSet's member template, the security account's report
topic, and the CLI's organization audit all use these, so they are declared once, here."""

from __future__ import annotations

import re

from imds_enforcer.domain.callers import CALLER_ANALYSIS_READ_ACTIONS
from imds_enforcer.domain.doors import DOOR_READ_ACTIONS

# The read-only role the StackSet puts in every member account (once, in the home region: IAM is global), assumed by
# `imds-enforcer audit --org` from the management or delegated administrator account.
AUDIT_ROLE_NAME = "imds-enforcer-audit"
# Exactly what `imds-enforcer audit --org` calls inside a member account (a test measures it on the emulator): the
# audit role's policy allows these and nothing else. Every one is a read, and none supports resource-level
# permissions. (sts:GetCallerIdentity needs no permission.)
AUDIT_READ_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeLaunchConfigurations",
    "cloudwatch:GetMetricData",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeRegions",  # --all-regions: the account's own enabled regions
    "ec2:GetInstanceMetadataDefaults",
    # The IMDS doors outside EC2 instances, and the caller analysis' results (read, never sent).
    *DOOR_READ_ACTIONS,
    *CALLER_ANALYSIS_READ_ACTIONS,
)
# How many account-regions the organization audit reads at once, by default and at most. Each worker makes a few
# dozen read calls per account-region, far inside EC2's and CloudWatch's per-account-region request budgets.
AUDIT_DEFAULT_WORKERS = 8
AUDIT_MAX_WORKERS = 64
# The security account's topic every member also publishes to; fixed names, so members can compute the ARN and the
# key's alias without a cross-account reference.
ORG_REPORT_TOPIC_NAME = "imds-enforcer-org-reports"
ORG_REPORT_KEY_ALIAS = "alias/imds-enforcer-org-reports"

# AWS Organizations' own id formats (the API's patterns).
ORGANIZATION_ID = re.compile(r"^o-[a-z0-9]{10,32}$")
ROOT_ID = re.compile(r"^r-[a-z0-9]{4,32}$")
OU_ID = re.compile(r"^ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")
ACCOUNT_ID = re.compile(r"^\d{12}$")
# IAM role names: 1 to 64 of letters, digits and +=,.@_-
ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")


def is_ou_or_root(value: str) -> bool:
    """An OU id (ou-...-...) or a root id (r-...): the targets a service-managed StackSet and the audit accept."""
    return bool(OU_ID.match(value) or ROOT_ID.match(value))


def org_report_topic_arn(*, partition: str, region: str, account: str) -> str:
    """The security account's report topic, from its fixed name."""
    return f"arn:{partition}:sns:{region}:{account}:{ORG_REPORT_TOPIC_NAME}"


def role_arn(*, partition: str, account: str, role_name: str) -> str:
    return f"arn:{partition}:iam::{account}:role/{role_name}"

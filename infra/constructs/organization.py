"""The pieces of organization mode (a service-managed StackSet): the code published where member accounts can read
it, what a member stack takes from the StackSet, and the member accounts' read-only audit role.

StackSet members have no CDK bootstrap, so no CDK assets: the management account publishes the Lambda code and the
dependencies layer once per region (Lambda reads code only from a bucket in the function's own region) to a bucket
that every principal of the organization may read, and the member template names the objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from infra.constructs.enforcer_function import CODE_EXCLUDES, LAYER_EXCLUDES
from infra.constructs.nag import acknowledge, nag_resource
from infra.constructs.permissions import DoorArns, audit_permissions

ASSET_BUCKET_PREFIX = "imds-enforcer-assets"
CODE_PREFIX = "lambda/"
# The StackSet's member template (read by the management account's CloudFormation only).
TEMPLATE_PREFIX = "templates/"
# The member template's parameters (logical ids at the stack's top level, so the StackSet can name them).
BUCKET_PREFIX_PARAMETER = "AssetBucketPrefix"
TRUSTED_ACCOUNT_PARAMETER = "AuditTrustedAccount"
OU_PARAMETER = "OrganizationalUnit"


@dataclass(frozen=True, slots=True)
class Artifacts:
    """Where the code and the layer are in every region's asset bucket (content-addressed keys)."""

    code_key: str
    layer_key: str


def asset_bucket_prefix(account: str) -> str:
    """``imds-enforcer-assets-<management account>``; each region's bucket adds ``-<region>``."""
    return f"{ASSET_BUCKET_PREFIX}-{account}"


class OrgAssets(Construct):
    """This region's asset bucket (versioned, SSE-S3, TLS only, readable by the organization) and the code and layer
    copied into it under keys named by their content hash, so a new build is a new key and a StackSet update.

    SSE-S3, not KMS: with a customer managed key every member's CloudFormation role would also need a key grant
    (the AWS managed aws/s3 key cannot be shared across accounts at all), and the objects are this open code, not
    secrets; SSE-S3 encrypts at rest and leaves access to the bucket policy alone.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, code_dir: Path, layer_dir: Path, organization_id: str
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=f"{asset_bucket_prefix(stack.account)}-{stack.region}",
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # Member functions keep their own copy of the code, but every StackSet update reads from here.
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "Holds only build artifacts (this service's Lambda code and layer) that the whole organization may read "
            "by design; server access logs would need a log bucket per region for no secret; CloudTrail data events "
            "are the place to record reads if wanted.",
        )
        # Member accounts' CloudFormation (the StackSet's stacksets-exec role) reads the code when it creates or
        # updates a function: any principal of the organization, these objects only, reads only.
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OrganizationReadsCode",
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject"],
                resources=[self.bucket.arn_for_objects(f"{CODE_PREFIX}*")],
                conditions={"StringEquals": {"aws:PrincipalOrgID": organization_id}},
            )
        )
        code = s3_assets.Asset(self, "Code", path=str(code_dir), exclude=CODE_EXCLUDES)
        layer = s3_assets.Asset(self, "Layer", path=str(layer_dir), exclude=LAYER_EXCLUDES)
        for name, asset in (("PublishCode", code), ("PublishLayer", layer)):
            # extract=False copies the zip as it is, to <prefix><basename of the asset's key> = lambda/<hash>.zip.
            s3_deployment.BucketDeployment(
                self,
                name,
                sources=[s3_deployment.Source.bucket(asset.bucket, asset.s3_object_key)],
                destination_bucket=self.bucket,
                destination_key_prefix=CODE_PREFIX,
                extract=False,
                prune=False,  # older builds stay: a StackSet instance still on them can roll back
                retain_on_delete=True,
            )
        self.artifacts = Artifacts(code_key=_key(code), layer_key=_key(layer))
        acknowledge_bucket_deployment(stack)

    def publish_template(self, body: str) -> str:
        """Publish the StackSet's member template into this (the home region's) bucket, keyed by its content, and
        return its URL for the StackSet's TemplateURL. Only the management account reads it (CloudFormation, for the
        StackSet): the organization's read grant covers the code prefix alone."""
        key = f"{TEMPLATE_PREFIX}{hashlib.sha256(body.encode()).hexdigest()}.json"
        s3_deployment.BucketDeployment(
            self,
            "PublishMemberTemplate",
            sources=[s3_deployment.Source.data(key, body)],
            destination_bucket=self.bucket,
            prune=False,  # an older template stays: a StackSet operation still reading it finishes
            retain_on_delete=True,
        )
        stack = cdk.Stack.of(self)
        return f"https://{self.bucket.bucket_name}.s3.{stack.region}.{stack.url_suffix}/{key}"


def _key(asset: s3_assets.Asset) -> str:
    # The asset's own key is "<hash>.zip" (a literal, the same in every region for the same content).
    if cdk.Token.is_unresolved(asset.s3_object_key):
        raise ValueError("the asset's object key is not known at synth time: the member template cannot name it")
    return f"{CODE_PREFIX}{asset.s3_object_key.rsplit('/', 1)[-1]}"


def acknowledge_bucket_deployment(stack: cdk.Stack) -> None:
    """cdk-nag's findings on CDK's own BucketDeployment handler (a singleton per stack), acknowledged exactly."""
    why = (
        "CDK's BucketDeployment handler (aws-cdk-lib), which copies the build into the asset bucket during a "
        "deployment only: its role and grants (read the CDK staging bucket, write the destination) are CDK's own."
    )
    for child in stack.node.children:
        if not child.node.id.startswith("Custom::CDKBucketDeployment"):
            continue
        acknowledge(child, "AwsSolutions-L1", f"{why} Its runtime is pinned by aws-cdk-lib, not by this project.")
        role = child.node.find_child("ServiceRole")
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
            f"{why} It writes its logs with the AWS managed basic execution policy.",
        )
        policy = role.node.find_child("DefaultPolicy")
        assert isinstance(policy, iam.Policy)
        document = stack.resolve(policy.document)
        for statement in document.get("Statement", []):
            actions = statement.get("Action", [])
            for action in actions if isinstance(actions, list) else [actions]:
                if "*" in action:
                    acknowledge(policy, f"AwsSolutions-IAM5[Action::{action}]", why)
            resources = statement.get("Resource", [])
            for resource in resources if isinstance(resources, list) else [resources]:
                flat = nag_resource(policy, resource)
                if "*" in flat:
                    acknowledge(policy, f"AwsSolutions-IAM5[Resource::{flat}]", why)


class StackSetMember(Construct):
    """What a member stack takes from its StackSet: where the code is (the region's asset bucket), which account may
    assume the audit role, and the OU the instance was deployed through. Parameters, so one template serves every
    region and OU."""

    def __init__(self, scope: Construct, construct_id: str, *, artifacts: Artifacts) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        # At the stack's top level: their logical ids are the names the StackSet passes values for.
        self.bucket_prefix = cdk.CfnParameter(
            stack,
            BUCKET_PREFIX_PARAMETER,
            description="imds-enforcer-assets-<management account>: each region's bucket adds -<region>",
            allowed_pattern="^[a-z0-9][a-z0-9.-]{1,40}$",
        )
        self.trusted_account = cdk.CfnParameter(
            stack,
            TRUSTED_ACCOUNT_PARAMETER,
            description="The management (or delegated administrator) account that may assume the audit role",
            allowed_pattern=r"^\d{12}$",
        )
        self.organizational_unit = cdk.CfnParameter(
            stack,
            OU_PARAMETER,
            description="The OU (or root) the StackSet deployed this account through; reports name it",
            default="",
            allowed_pattern=r"^(ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}|r-[a-z0-9]{4,32})?$",
        )
        bucket = s3.Bucket.from_bucket_name(
            self, "Assets", cdk.Fn.join("-", [self.bucket_prefix.value_as_string, cdk.Aws.REGION])
        )
        self.code = lambda_.Code.from_bucket(bucket, artifacts.code_key)
        self.layer_code = lambda_.Code.from_bucket(bucket, artifacts.layer_key)


class AuditRole(Construct):
    """The read-only role `imds-enforcer audit --org` assumes in a member account: trusts the management (or
    delegated administrator) account, may read exactly what the audit reads, and exists once per account (IAM is
    global), in the home region's stack instance (a CloudFormation condition)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, role_name: str, trusted_account: str, home_region: str
    ) -> None:
        super().__init__(scope, construct_id)
        permissions = audit_permissions(DoorArns.of(self, any_region=True))
        self.role = iam.Role(
            self,
            "Role",
            role_name=role_name,
            assumed_by=iam.AccountPrincipal(trusted_account),
            description="IMDSv2 Enforcer organization audit: reads instances, their IMDSv1 use and launch sources",
            max_session_duration=cdk.Duration.hours(1),
            inline_policies={
                "ReadImdsPosture": iam.PolicyDocument(statements=[permission.statement for permission in permissions])
            },
        )
        in_home_region = cdk.CfnCondition(
            self, "InHomeRegion", expression=cdk.Fn.condition_equals(cdk.Aws.REGION, home_region)
        )
        resource = self.role.node.default_child
        assert isinstance(resource, iam.CfnRole)
        resource.cfn_options.condition = in_home_region
        reasons: dict[str, list[str]] = {}
        for permission in permissions:
            for arn in permission.statement.resources:
                reasons.setdefault(nag_resource(self, arn), []).append(permission.wildcard_reason)
        for arn, why in reasons.items():
            acknowledge(self.role, f"AwsSolutions-IAM5[Resource::{arn}]", " ".join(dict.fromkeys(why)))

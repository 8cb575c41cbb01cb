"""The stack's state table: what was last reported about each instance (the launch watch's ledger), and the record
of every switch until it is reported and tagged (functions/imds_enforcer/domain/switches.py)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

# DynamoDB's TTL deletes an item once this epoch-seconds attribute is in the past (aws/ledger.py writes it).
TTL_ATTRIBUTE = "expires_at"
# Sparse: only open switch records (not yet reported, or not yet tagged) carry the key, so the gate's Query reads
# exactly those (aws/ledger.py: PENDING_INDEX, PENDING_ATTRIBUTE).
PENDING_INDEX = "pending"


class StateTable(Construct):
    """On-demand, encrypted, point-in-time recoverable; items expire by TTL, so it never grows with the years."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.TableV2(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            billing=dynamodb.Billing.on_demand(),
            encryption=dynamodb.TableEncryptionV2.aws_managed_key(),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            global_secondary_indexes=[
                dynamodb.GlobalSecondaryIndexPropsV2(
                    index_name=PENDING_INDEX,
                    partition_key=dynamodb.Attribute(name="pending", type=dynamodb.AttributeType.STRING),
                    sort_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
                    projection_type=dynamodb.ProjectionType.ALL,
                )
            ],
            # Only what was last reported and switches on their way to a report: losing it means some verdicts are
            # reported once more and untagged switches wait for a person (their log lines and reports stay).
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    @property
    def pending_index_arn(self) -> str:
        return f"{self.table.table_arn}/index/{PENDING_INDEX}"

"""The stack's state table: what was last reported about each instance (the launch watch's ledger)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

# DynamoDB's TTL deletes an item once this epoch-seconds attribute is in the past (aws/ledger.py writes it).
TTL_ATTRIBUTE = "expires_at"


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
            # Only what was last reported: losing it means some verdicts are reported once more, nothing else.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

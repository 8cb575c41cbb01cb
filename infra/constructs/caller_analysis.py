"""The command document the usage gate sends to a blocked instance to name its IMDSv1 callers (opt-in)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from imds_enforcer.domain.analyzer_document import document_content


def analyzer_document_name(stack_name: str) -> str:
    """A fixed name (a plain string at synth, so the Lambda's settings can be checked): one document a stack."""
    return f"{stack_name}-ImdsPacketAnalyzer"


class AnalyzerDocument(Construct):
    """The ImdsPacketAnalyzer, pinned to one commit, as an SSM Command document of this stack (Linux only).

    `NewVersion`: a changed document (a new pinned commit) becomes a new default version of the same name, instead of
    a replacement that a fixed name would not allow.
    """

    def __init__(self, scope: Construct, construct_id: str, *, default_minutes: int) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.document_name = analyzer_document_name(stack.stack_name)
        self.document = ssm.CfnDocument(
            self,
            "Document",
            name=self.document_name,
            document_type="Command",
            document_format="JSON",
            target_type="/AWS::EC2::Instance",
            update_method="NewVersion",
            content=document_content(default_minutes=default_minutes),
        )
        self.document_arn = stack.format_arn(service="ssm", resource="document", resource_name=self.document_name)

"""Organization mode: a member account's reports reach its own topic and the security account's, under moto.

The security account is a real second account in moto (created through Organizations, entered with its
OrganizationAccountAccessRole), and its topic lives in another region than the member's Lambda: SNS serves a topic
only from its own region, so the member must publish there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from emulator.organization import create_organization, member_session
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.organization import ORG_REPORT_TOPIC_NAME
from imds_enforcer.handlers.launch_watch import handler as launch_watch
from imds_enforcer.handlers.usage_gate import handler as usage_gate
from tests.support.aws import SCHEDULED, ReportInbox, launch, run_instances_event
from tests.support.context import FakeLambdaContext
from tests.support.schema import assert_valid_report

CENTRAL_REGION = "eu-west-1"
OU = "ou-ab12-cdef3456"


@dataclass
class CentralInbox:
    """The security account's report topic, with a queue subscribed (what its e-mail and Slack subscribers get)."""

    topic_arn: str
    queue_url: str
    sqs: Any

    def drain(self) -> list[dict[str, Any]]:
        reports = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                reports.append(json.loads(json.loads(message["Body"])["Message"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return reports


@pytest.fixture
def central(inbox: ReportInbox, monkeypatch: pytest.MonkeyPatch) -> CentralInbox:
    org = create_organization()
    security = org.add_member("security").account_id
    session = member_session(security, CENTRAL_REGION)
    sns, sqs = session.client("sns"), session.client("sqs")
    topic_arn = sns.create_topic(Name=ORG_REPORT_TOPIC_NAME)["TopicArn"]
    queue_url = sqs.create_queue(QueueName="central-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    # What the StackSet's member template sets on the member's functions
    monkeypatch.setenv("CENTRAL_REPORT_TOPIC_ARN", topic_arn)
    monkeypatch.setenv("ORGANIZATIONAL_UNIT", OU)
    assert topic_arn.split(":")[4] == security
    return CentralInbox(topic_arn=topic_arn, queue_url=queue_url, sqs=sqs)


def test_every_gate_report_reaches_the_local_and_the_central_topic_naming_the_ou(
    inbox: ReportInbox, central: CentralInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given an instance without metric data in the member account
    (instance_id,) = launch()

    # When the gate runs there
    summary = usage_gate(SCHEDULED, lambda_context)

    # Then the local team's topic has the report, with the OU it was deployed through
    (local,) = inbox.drain()
    assert summary["published"] == 1
    assert local.report["organizational_unit"] == OU
    assert local.report["findings"][0]["resource_id"] == instance_id
    # And the security account's topic has the same report
    (received,) = central.drain()
    assert_valid_report(received)
    assert received == local.report


def test_a_launch_report_reaches_both_topics_too(
    inbox: ReportInbox, central: CentralInbox, lambda_context: FakeLambdaContext
) -> None:
    (instance_id,) = launch()

    launch_watch(run_instances_event([instance_id]), lambda_context)

    (local,) = inbox.drain()
    (received,) = central.drain()
    assert received["trigger"] == "launch"
    assert received == local.report


def test_a_central_topic_that_refuses_still_leaves_the_local_report_and_fails_loudly(
    inbox: ReportInbox, central: CentralInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a central topic that does not exist (deleted, or the security account's stack not deployed yet)
    monkeypatch.setenv("CENTRAL_REPORT_TOPIC_ARN", central.topic_arn.replace(ORG_REPORT_TOPIC_NAME, "gone"))
    launch()

    # When the gate runs, then the invocation fails (Lambda's retry and the dead-letter queue see it)...
    with pytest.raises(AwsError) as raised:
        usage_gate(SCHEDULED, lambda_context)

    # ...after the local team got its report
    assert raised.value.operation == "Publish"
    assert raised.value.code == "NotFound"
    assert len(inbox.drain()) == 1
    assert central.drain() == []


def test_without_organization_settings_only_the_local_topic_is_used(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    launch()

    usage_gate(SCHEDULED, lambda_context)

    (local,) = inbox.drain()
    assert "organizational_unit" not in local.report

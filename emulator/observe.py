"""Watching the service from outside, as a subscriber and an auditor would: the report topic with an SQS queue
subscribed to it, and a count of the AWS calls the product's clients make. Used by the demo, tests and benchmarks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3


@dataclass(frozen=True)
class Received:
    subject: str
    attributes: dict[str, str]
    report: dict[str, Any]
    # The SNS envelope as the queue received it (Message, Subject, MessageAttributes, MessageId, TopicArn, ...).
    envelope: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def findings(self) -> list[dict[str, Any]]:
        findings: list[dict[str, Any]] = self.report.get("findings", [])
        return findings


@dataclass(frozen=True)
class Inbox:
    """The report topic with an SQS queue subscribed: what a security team's subscription receives."""

    topic_arn: str
    queue_url: str
    # Run on every report read back (the tests check each against the published JSON Schema).
    check: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)
    # Every message drained so far, in order: what another subscriber (the Slack notifier) would have been sent.
    history: list[Received] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def create(
        cls, name: str = "imds-enforcer-reports", *, check: Callable[[dict[str, Any]], None] | None = None
    ) -> Inbox:
        sns = boto3.client("sns")
        sqs = boto3.client("sqs")
        topic_arn = sns.create_topic(Name=name)["TopicArn"]
        queue_url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=attributes["QueueArn"])
        return cls(topic_arn=topic_arn, queue_url=queue_url, check=check)

    def drain(self) -> list[Received]:
        sqs = boto3.client("sqs")
        received: list[Received] = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return received
            for message in batch:
                envelope = json.loads(message["Body"])
                report = json.loads(envelope["Message"])
                if self.check is not None:
                    self.check(report)
                received.append(
                    Received(
                        subject=envelope.get("Subject", ""),
                        attributes={
                            key: value["Value"] for key, value in envelope.get("MessageAttributes", {}).items()
                        },
                        report=report,
                        envelope=envelope,
                    )
                )
                self.history.append(received[-1])
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass
class CallCounter:
    """Counts API calls per operation (one per call, not per retry), and the queries in each GetMetricData call."""

    counts: Counter[str] = field(default_factory=Counter)
    metric_queries: list[int] = field(default_factory=list)

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.counts[model.name] += 1
        if model.name == "GetMetricData":
            self.metric_queries.append(len(params.get("MetricDataQueries", [])))

    def attach(self, *clients: Any) -> CallCounter:
        for client in clients:
            # Once per API call (not per retry), with the parameters as the caller passed them.
            client.meta.events.register("provide-client-params.*.*", self)
        return self

    def take(self) -> Counter[str]:
        """The counts so far, and start again."""
        taken, self.counts = self.counts, Counter()
        self.metric_queries = []
        return taken

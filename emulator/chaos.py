"""Seeded AWS faults for the reliability suite and benchmark: a share of every HTTP send the handlers' clients make
fails, below botocore's retry layer (so its real retries, and its retry quota, happen), and each handler is invoked
again with the same event after it raises, as Lambda's asynchronous retries (and SQS redeliveries) would.

The scenarios then measure, with the faults off, what a subscriber and an auditor would see: every optional
instance accounted for (a finding in a report, published or logged in full, or left unchanged by an invocation that
ended in the dead-letter queue), no instance switched against the rules, no switch missing from every report and
every log line, and no switch left both untagged and unrecorded (so the watch after the switch could not find it).
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.retries.standard import ExponentialBackoff

from emulator import ACCOUNT, REGION
from emulator.events import queue_batch, scheduled_event, state_change_event
from emulator.fleet import backdate_launch, create_ledger_table
from emulator.observe import Inbox

ENFORCED_AT_TAG = "imdsv2-enforcer:enforced-at"
EXEMPT_TAG = "imdsv2-exempt"
LEDGER = "imds-enforcer-state"
KINDS = ("throttle", "internal", "timeout", "connection", "refused")
# (code, HTTP status) per service and fault kind, as each service answers.
_CODES: dict[str, dict[str, tuple[str, int]]] = {
    "ec2": {
        "throttle": ("RequestLimitExceeded", 503),
        "internal": ("InternalError", 500),
        "refused": ("UnauthorizedOperation", 403),
    },
    "sns": {
        "throttle": ("Throttling", 400),
        "internal": ("InternalError", 500),
        "refused": ("AuthorizationError", 403),
    },
    "dynamodb": {
        "throttle": ("ThrottlingException", 400),
        "internal": ("InternalServerError", 500),
        "refused": ("AccessDeniedException", 400),
    },
    "cloudwatch": {
        "throttle": ("Throttling", 400),
        "internal": ("InternalServiceError", 500),
        "refused": ("AccessDenied", 403),
    },
    "ssm": {
        "throttle": ("ThrottlingException", 400),
        "internal": ("InternalServerError", 500),
        "refused": ("AccessDeniedException", 400),
    },
}


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


def _headers(values: Mapping[str, str]) -> Any:
    # AWSResponse takes a plain mapping at run time (botocore reads it with .get); its stubs ask for HTTPHeaders.
    return dict(values)


def _error_response(service: str, code: str, status: int) -> AWSResponse:
    url = "https://fault-injection.invalid/"
    if service == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>injected</Message></Error></Errors>"
            "<RequestID>0</RequestID></Response>"
        ).encode()
        return AWSResponse(url, status, _headers({"Content-Type": "text/xml"}), _Body(body))
    if service == "sns":
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message></Error>"
            "<RequestId>0</RequestId></ErrorResponse>"
        ).encode()
        return AWSResponse(url, status, _headers({"Content-Type": "text/xml"}), _Body(body))
    content_type = {"dynamodb": "application/x-amz-json-1.0", "ssm": "application/x-amz-json-1.1"}.get(
        service, "application/x-amz-json-1.0"
    )
    headers = _headers({"Content-Type": content_type, "x-amzn-query-error": f"{code};Sender"})
    return AWSResponse(url, status, headers, _Body(json.dumps({"__type": code, "message": "injected"}).encode()))


@dataclass
class Chaos:
    """Fails `rate` of the sends of every client it is attached to, with a fault kind drawn from KINDS."""

    rng: random.Random
    rate: float = 0.3
    enabled: bool = True
    sends: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)

    def attach(self, *clients: Any) -> Chaos:
        for client in clients:
            service = client.meta.service_model.service_id.hyphenize()
            client.meta.events.register_first(f"before-send.{service}", self._send)
        return self

    def _send(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
        if not self.enabled:
            return None
        self.sends += 1
        if self.rng.random() >= self.rate:
            return None
        parts = [*event_name.split("."), "", "", ""]
        service, operation = parts[1], parts[2]
        kind = self.rng.choice(KINDS)
        self.injected[kind] += 1
        self.by_operation[operation] += 1
        # In-process moto also answers before-send: pointed elsewhere, the faulted request is never applied.
        request.url = "https://fault-injection.invalid/"
        if kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url, error="Read timed out (injected)")
        if kind == "connection":
            raise EndpointConnectionError(endpoint_url=request.url)
        code, status = _CODES.get(service, _CODES["ec2"])[kind]
        return _error_response(service, code, status)

    @contextmanager
    def off(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


@contextmanager
def no_backoff() -> Iterator[None]:
    """botocore's real retries, without their sleeps."""
    original = ExponentialBackoff.delay_amount
    ExponentialBackoff.delay_amount = lambda self, context: 0.0  # type: ignore[method-assign]
    try:
        yield
    finally:
        ExponentialBackoff.delay_amount = original  # type: ignore[method-assign]


class LogRecorder(logging.Handler):
    """Collects the service's log lines that carry a switch or a report written out in full."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.switches: list[str] = []
        self.logged_reports: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        switch = getattr(record, "switch", None)
        if isinstance(switch, Mapping):
            self.switches.append(str(switch.get("instance_id")))
        report = getattr(record, "report", None)
        if isinstance(report, str):
            self.logged_reports.append(json.loads(report))

    @contextmanager
    def attached(self) -> Iterator[LogRecorder]:
        logger = logging.getLogger("imds-enforcer")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


@dataclass
class Context:
    """The Lambda context the handlers read (account and region from the ARN, a time budget)."""

    function_name: str = "imds-enforcer-chaos"
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:imds-enforcer-chaos"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class Figures:
    """What the scenarios measured, summed over runs."""

    events: int = 0
    runs: int = 0
    sends: int = 0
    faults: int = 0
    invocations: int = 0
    raised: int = 0
    dead_letters: int = 0
    present: int = 0
    accounted: int = 0
    accounted_by_dead_letter: int = 0
    switches: int = 0
    wrongful: int = 0
    unreported: int = 0  # in no report (published or logged in full) and no switch log line
    unpublished: int = 0  # in no published report (only in the log) after the run and its retries
    untagged: int = 0  # switched, untagged after the run
    untagged_unwatched: int = 0  # switched, neither tagged nor recorded: the watch could not find it

    def add(self, other: Figures) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _put_daily(instance_id: str, values: Sequence[float], now: datetime) -> None:
    data = []
    for day, value in enumerate(values):
        stamp = now - timedelta(days=day, hours=3)
        dimensions = [{"Name": "InstanceId", "Value": instance_id}]
        data.append({"MetricName": "MetadataNoToken", "Dimensions": dimensions, "Timestamp": stamp, "Value": value})
        data.append(
            {
                "MetricName": "CPUUtilization",
                "Dimensions": dimensions,
                "Timestamp": stamp - timedelta(hours=1),
                "Value": 5,
            }
        )
    boto3.client("cloudwatch").put_metric_data(Namespace="AWS/EC2", MetricData=data)  # type: ignore[arg-type]


def _launch(count: int, *, tags: Mapping[str, str] | None = None) -> list[str]:
    kwargs: dict[str, Any] = {
        "ImageId": "ami-12c6146b",
        "MinCount": count,
        "MaxCount": count,
        "InstanceType": "t3.micro",
        "MetadataOptions": {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1},
    }
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": key, "Value": value} for key, value in tags.items()]}
        ]
    return [item["InstanceId"] for item in boto3.client("ec2").run_instances(**kwargs)["Instances"]]


def _state() -> dict[str, tuple[str, dict[str, str]]]:
    """Instance id -> (HttpTokens, tags), read with the test's own client (never faulted)."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for page in boto3.client("ec2").get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for item in reservation["Instances"]:
                tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}
                found[item["InstanceId"]] = (item.get("MetadataOptions", {}).get("HttpTokens", "optional"), tags)
    return found


def _recorded() -> set[str]:
    items = boto3.client("dynamodb").scan(TableName=LEDGER)["Items"]
    return {str(item["pk"]["S"]).removeprefix("switch#") for item in items if item["pk"]["S"].startswith("switch#")}


FORBIDDEN: set[str] = set()


def invoke_with_retries(call: Callable[[], object], *, retries: int = 2) -> tuple[int, int, bool]:
    """Call the handler; after it raises, call it again with the same event, as Lambda would. Returns (invocations,
    raised, ended in the dead-letter queue)."""
    raised = 0
    for attempt in range(retries + 1):
        try:
            call()
        except Exception:
            raised += 1
            continue
        return attempt + 1, raised, False
    return retries + 1, raised, True


def _measure(
    *,
    before: Mapping[str, tuple[str, dict[str, str]]],
    optional: Sequence[str],
    allowed: set[str],
    inbox: Inbox,
    logs: LogRecorder,
    dead_letter: bool,
) -> Figures:
    figures = Figures(present=len(optional))
    after = _state()
    published = [finding for message in inbox.drain() for finding in message.findings]
    logged = [finding for report in logs.logged_reports for finding in report.get("findings", [])]
    published_ids = {f["resource_id"] for f in published}
    reported_ids = published_ids | {f["resource_id"] for f in logged}
    enforced_published = {f["resource_id"] for f in published if f["action"] == "enforced"}
    enforced_anywhere = enforced_published | {f["resource_id"] for f in logged if f["action"] == "enforced"}
    recorded = _recorded()
    for instance_id in optional:
        if instance_id in reported_ids:
            figures.accounted += 1
        elif dead_letter and after[instance_id][0] == before[instance_id][0]:
            figures.accounted += 1
            figures.accounted_by_dead_letter += 1
    switched = [i for i in optional if before[i][0] == "optional" and after[i][0] == "required"]
    figures.switches = len(switched)
    for instance_id in switched:
        tags = after[instance_id][1]
        if instance_id not in allowed:
            figures.wrongful += 1
        if instance_id not in enforced_anywhere and instance_id not in logs.switches:
            figures.unreported += 1
        if instance_id not in enforced_published:
            figures.unpublished += 1
        if ENFORCED_AT_TAG not in tags:
            figures.untagged += 1
            if instance_id not in recorded:
                figures.untagged_unwatched += 1
    figures.dead_letters = int(dead_letter)
    return figures


def gate_run(*, rng: random.Random, handler: Callable[[dict[str, Any], Any], object], rate: float = 0.3) -> Figures:
    """One gate sweep under faults (and its retries) over a fresh fleet: ready, IMDSv1-using, new, exempt."""
    now = datetime.now(UTC)
    inbox = Inbox.create(f"chaos-{uuid.uuid4().hex[:8]}")
    ready = _launch(rng.randint(4, 8))
    used = _launch(2)
    young = _launch(2)
    exempt = _launch(2, tags={EXEMPT_TAG: "vendor appliance"})
    backdate_launch([*ready, *used, *exempt], 30)
    for instance_id in [*ready, *exempt]:
        _put_daily(instance_id, [0.0] * 14, now)
    for instance_id in used:
        _put_daily(instance_id, [0.0, 3.0, *[0.0] * 12], now)
    optional = [*ready, *used, *young, *exempt]
    before = _state()
    return _run(
        lambda: handler(scheduled_event(), Context()),
        rng=rng,
        rate=rate,
        before=before,
        optional=optional,
        allowed=set(ready),
        inbox=inbox,
        events=1,
    )


def launch_run(*, rng: random.Random, handler: Callable[[dict[str, Any], Any], object], rate: float = 0.3) -> Figures:
    """One burst of new launches (an SQS batch of `running` events) under faults, and its redeliveries."""
    inbox = Inbox.create(f"chaos-{uuid.uuid4().hex[:8]}")
    fresh = _launch(rng.randint(4, 10))
    exempt = _launch(1, tags={EXEMPT_TAG: "vendor appliance"})
    optional = [*fresh, *exempt]
    batch = queue_batch([state_change_event(instance_id) for instance_id in optional])
    before = _state()
    return _run(
        lambda: handler(batch, Context()),
        rng=rng,
        rate=rate,
        before=before,
        optional=optional,
        allowed=set(fresh),
        inbox=inbox,
        events=len(optional),
    )


def _run(
    call: Callable[[], object],
    *,
    rng: random.Random,
    rate: float,
    before: Mapping[str, tuple[str, dict[str, str]]],
    optional: Sequence[str],
    allowed: set[str],
    inbox: Inbox,
    events: int,
) -> Figures:
    import os

    from imds_enforcer.aws import clients

    # (the gate's modifies go through the paced EC2 client: it gets its share of the faults too)
    chaos = Chaos(rng=rng, rate=rate).attach(
        clients.ec2(), clients.ec2_paced(), clients.cloudwatch(), clients.sns(), clients.dynamodb(), clients.ssm()
    )
    os.environ["REPORT_TOPIC_ARN"] = inbox.topic_arn
    with LogRecorder().attached() as logs, no_backoff():
        invocations, raised, dead_letter = invoke_with_retries(call)
    chaos.enabled = False
    figures = _measure(
        before=before, optional=optional, allowed=allowed, inbox=inbox, logs=logs, dead_letter=dead_letter
    )
    figures.events = events
    figures.runs = 1
    figures.invocations = invocations
    figures.raised = raised
    figures.sends = chaos.sends
    figures.faults = sum(chaos.injected.values())
    # Instances no run may ever switch (IMDSv1 users, too young, exempt), this run's and every earlier one's
    FORBIDDEN.update(set(optional) - allowed)
    after = _state()
    figures.wrongful += sum(1 for instance_id in FORBIDDEN - set(optional) if after[instance_id][0] == "required")
    return figures


def prepare_account() -> None:
    """Fix mode, and the stack's state table as the stack creates it, named in LEDGER_TABLE_NAME."""
    import os

    FORBIDDEN.clear()
    create_ledger_table(LEDGER)
    os.environ["LEDGER_TABLE_NAME"] = LEDGER
    os.environ["ENFORCEMENT_MODE"] = "fix"

"""Inject AWS faults below the retry layer, so botocore's real retries happen (see LOCAL-AWS-NOTES.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import BotoCoreError, EndpointConnectionError, ReadTimeoutError

from emulator.observe import CallCounter


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


def ec2_error(code: str, message: str = "injected fault", status: int = 400) -> AWSResponse:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()
    return AWSResponse("https://ec2.amazonaws.com/", status, {"Content-Type": "text/xml"}, _Body(body))


def cloudwatch_error(code: str, message: str = "injected fault", status: int = 400) -> AWSResponse:
    body = f'{{"__type": "{code}", "message": "{message}"}}'.encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{code};Sender"}
    return AWSResponse("https://monitoring.amazonaws.com/", status, headers, _Body(body))


def json_error(code: str, message: str = "injected fault", status: int = 400) -> AWSResponse:
    """An error of a JSON-protocol service (SageMaker, Lightsail, SSM, ECS, EMR: application/x-amz-json-1.1)."""
    body = f'{{"__type": "{code}", "message": "{message}"}}'.encode()
    return AWSResponse(
        "https://json.amazonaws.com/", status, {"Content-Type": "application/x-amz-json-1.1"}, _Body(body)
    )


def rest_json_error(code: str, message: str = "injected fault", status: int = 400) -> AWSResponse:
    """An error of a REST-JSON service (EventBridge Scheduler, Lambda): the code travels in x-amzn-ErrorType."""
    body = f'{{"Message": "{message}"}}'.encode()
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code}
    return AWSResponse("https://scheduler.amazonaws.com/", status, headers, _Body(body))


def timeout_error() -> ReadTimeoutError:
    """The answer never arrives (botocore raises it from the HTTP layer; its standard retries apply)."""
    return ReadTimeoutError(endpoint_url="https://fault-injection.invalid/", error="Read timed out. (read timeout=30)")


def connection_error() -> EndpointConnectionError:
    """The endpoint cannot be reached at all."""
    return EndpointConnectionError(endpoint_url="https://fault-injection.invalid/")


@dataclass
class Fault:
    """Answers the first `times` sends of an operation with an error response, or raises the botocore exception
    the HTTP layer would (None: every send); then lets moto answer."""

    response: AWSResponse | BotoCoreError
    times: int | None = None
    only_for: str | None = None  # a substring of the request body, e.g. an instance id
    sends: int = 0
    injected: int = 0
    bodies: list[bytes] = field(default_factory=list)

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.sends += 1
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        self.bodies.append(body)
        if self.only_for is not None and self.only_for.encode() not in body:
            return None
        if self.times is not None and self.injected >= self.times:
            return None
        self.injected += 1
        # In-process moto answers every before-send too (botocore emits to all handlers and takes the first
        # response); pointing this one request elsewhere keeps moto from also applying it.
        request.url = "https://fault-injection.invalid/"
        if isinstance(self.response, BotoCoreError):
            raise self.response
        return self.response


def inject(client: Any, operation: str, fault: Fault) -> Fault:
    service = client.meta.service_model.service_name
    if service == "monitoring":
        service = "cloudwatch"
    client.meta.events.register_first(f"before-send.{service}.{operation}", fault)
    return fault


def count_calls(*clients: Any) -> CallCounter:
    return CallCounter().attach(*clients)


def throttle_first(client: Any, operation: str, times: int) -> Fault:
    """The first `times` sends of an EC2 operation answered 503 RequestLimitExceeded; botocore really retries."""
    return inject(client, operation, Fault(ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503), times))

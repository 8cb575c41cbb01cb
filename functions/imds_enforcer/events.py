"""The events the launch watch reacts to, as pydantic models, and what each one asks of it.

Real payloads vary (see ../shared/aws-samples/events): `responseElements` null (failed call) or absent (DryRun),
`errorCode`, camelCase `metadataOptions` in RunInstances but PascalCase keys under
`ModifyInstanceMetadataOptionsRequest`, numbers as strings, `instance-id` or `instance_id`, no `version`,
non-ISO `eventTime`. Everything that is not ours becomes an `Ignored` with a reason a person can read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

INSTANCE_ID = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
CLOUDTRAIL_CALL = "AWS API Call via CloudTrail"
STATE_CHANGE = "EC2 Instance State-change Notification"
ACTIONABLE_STATES = frozenset({"pending", "running"})


class EnforcerEvent(BaseModel):
    """The EventBridge envelope: the fields of Powertools' `EventBridgeModel`, relaxed where real deliveries differ
    (`version` missing, `resources` absent).

    Not a subclass: importing `aws_lambda_powertools.utilities.parser.models` builds every Powertools event model
    (~70 ms of cold start measured here) for the one we need.
    """

    model_config = ConfigDict(populate_by_name=True)

    version: str | None = None
    id: str
    source: str
    account: str
    time: datetime
    region: str
    resources: list[str] = Field(default_factory=list)
    detail_type: str = Field(alias="detail-type")
    detail: dict[str, Any]
    replay_name: str | None = Field(default=None, alias="replay-name")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class SessionIssuer(_Lenient):
    arn: str | None = None
    userName: str | None = None  # noqa: N815 - CloudTrail's spelling


class SessionContext(_Lenient):
    sessionIssuer: SessionIssuer | None = None  # noqa: N815


class UserIdentity(_Lenient):
    type: str | None = None
    arn: str | None = None
    invokedBy: str | None = None  # noqa: N815
    sessionContext: SessionContext | None = None  # noqa: N815


class CloudTrailCall(_Lenient):
    eventName: str  # noqa: N815
    eventSource: str  # noqa: N815
    awsRegion: str | None = None  # noqa: N815
    recipientAccountId: str | None = None  # noqa: N815
    errorCode: str | None = None  # noqa: N815
    userIdentity: UserIdentity | None = None  # noqa: N815
    requestParameters: dict[str, Any] | None = None  # noqa: N815
    responseElements: dict[str, Any] | None = None  # noqa: N815


class InstanceState(_Lenient):
    name: str | None = None


class LaunchedInstance(_Lenient):
    instanceId: str  # noqa: N815
    instanceState: InstanceState | None = None  # noqa: N815


class LaunchedInstances(_Lenient):
    items: list[LaunchedInstance] = Field(default_factory=list)


class RunInstancesResponse(_Lenient):
    instancesSet: LaunchedInstances | None = None  # noqa: N815


class MetadataOptionsRequest(_Lenient):
    """CloudTrail records this request with PascalCase keys (camelCase accepted too)."""

    instance_id: str = Field(validation_alias=AliasChoices("InstanceId", "instanceId"))
    http_tokens: str | None = Field(default=None, validation_alias=AliasChoices("HttpTokens", "httpTokens"))


class StateChange(_Lenient):
    instance_id: str = Field(validation_alias=AliasChoices("instance-id", "instance_id"))
    state: str


class TriggerKind(StrEnum):
    RUN_INSTANCES = "run_instances"
    REGRESSION = "regression"
    STATE_CHANGE = "state_change"


@dataclass(frozen=True, slots=True)
class LaunchTrigger:
    """Instances the launch watch must look at, and why."""

    kind: TriggerKind
    instance_ids: tuple[str, ...]
    event_id: str
    rejected_ids: tuple[str, ...] = ()  # ids in the event that are not instance ids


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str
    event_id: str | None = None


def read_launch_event(
    raw: object, *, account: str, region: str, service_role_path: str = ""
) -> LaunchTrigger | Ignored:
    """Decide what an incoming event asks of the launch watch. Never raises on bad input."""
    if not isinstance(raw, Mapping):
        return Ignored(f"event is a {type(raw).__name__}, not a JSON object")
    try:
        event = EnforcerEvent.model_validate(raw)
    except ValidationError as error:
        return Ignored(f"malformed EventBridge event: {_describe(error)}", _raw_id(raw))
    if event.account != account:
        return Ignored(f"event from account {event.account}; this deployment serves {account}", event.id)
    if event.region != region:
        return Ignored(f"event from region {event.region}; this deployment serves {region}", event.id)
    if event.source != "aws.ec2":
        return Ignored(f"event source is {event.source!r}, not 'aws.ec2'", event.id)
    if event.detail_type == STATE_CHANGE:
        return _read_state_change(event)
    if event.detail_type == CLOUDTRAIL_CALL:
        return _read_cloudtrail(event, account=account, service_role_path=service_role_path)
    return Ignored(f"detail-type {event.detail_type!r} is not one the launch watch handles", event.id)


def _read_state_change(event: EnforcerEvent) -> LaunchTrigger | Ignored:
    try:
        change = StateChange.model_validate(event.detail)
    except ValidationError as error:
        return Ignored(f"malformed state-change detail: {_describe(error)}", event.id)
    if change.state not in ACTIONABLE_STATES:
        return Ignored(f"instance {change.instance_id} is {change.state}: nothing to enforce", event.id)
    return _trigger(TriggerKind.STATE_CHANGE, [change.instance_id], event.id)


def _read_cloudtrail(event: EnforcerEvent, *, account: str, service_role_path: str) -> LaunchTrigger | Ignored:
    try:
        call = CloudTrailCall.model_validate(event.detail)
    except ValidationError as error:
        return Ignored(f"malformed CloudTrail detail: {_describe(error)}", event.id)
    name = call.eventName
    if call.eventSource != "ec2.amazonaws.com":
        return Ignored(f"{name} from {call.eventSource}, not ec2.amazonaws.com", event.id)
    if call.recipientAccountId not in (None, account):
        return Ignored(f"{name} recorded for account {call.recipientAccountId}, not {account}", event.id)
    if call.errorCode:
        return Ignored(f"{name} failed with {call.errorCode}: it changed nothing", event.id)
    if name == "RunInstances":
        return _read_run_instances(call, event.id)
    if name == "ModifyInstanceMetadataOptions":
        return _read_modify(call, event.id, service_role_path)
    return Ignored(f"CloudTrail event {name} is not one the launch watch handles", event.id)


def _read_run_instances(call: CloudTrailCall, event_id: str) -> LaunchTrigger | Ignored:
    if call.responseElements is None:
        return Ignored("RunInstances has no responseElements (dry run or failed call): no instance launched", event_id)
    try:
        response = RunInstancesResponse.model_validate(call.responseElements)
    except ValidationError as error:
        return Ignored(f"malformed RunInstances responseElements: {_describe(error)}", event_id)
    items = response.instancesSet.items if response.instancesSet else []
    if not items:
        return Ignored("RunInstances responseElements lists no instances", event_id)
    return _trigger(TriggerKind.RUN_INSTANCES, [item.instanceId for item in items], event_id)


def _read_modify(call: CloudTrailCall, event_id: str, service_role_path: str) -> LaunchTrigger | Ignored:
    parameters = call.requestParameters or {}
    body = parameters.get("ModifyInstanceMetadataOptionsRequest", parameters)
    try:
        request = MetadataOptionsRequest.model_validate(body)
    except ValidationError as error:
        return Ignored(f"malformed ModifyInstanceMetadataOptions request: {_describe(error)}", event_id)
    if (request.http_tokens or "").lower() != "optional":
        return Ignored(
            f"ModifyInstanceMetadataOptions on {request.instance_id} does not set HttpTokens to optional", event_id
        )
    caller = _caller_role_arn(call.userIdentity)
    if service_role_path and caller and f":role{service_role_path}" in caller:
        return Ignored(f"{request.instance_id} was set to optional by this service ({caller}): a rollback", event_id)
    return _trigger(TriggerKind.REGRESSION, [request.instance_id], event_id)


def _caller_role_arn(identity: UserIdentity | None) -> str | None:
    """The ARN of the role behind an assumed-role session; unlike the session ARN it includes the role's path."""
    if identity is None or identity.sessionContext is None or identity.sessionContext.sessionIssuer is None:
        return None
    return identity.sessionContext.sessionIssuer.arn


def _trigger(kind: TriggerKind, ids: list[str], event_id: str) -> LaunchTrigger | Ignored:
    unique = list(dict.fromkeys(ids))
    good = tuple(instance_id for instance_id in unique if INSTANCE_ID.match(instance_id))
    bad = tuple(instance_id for instance_id in unique if not INSTANCE_ID.match(instance_id))
    if not good:
        return Ignored(f"no valid instance id in the event (got {', '.join(map(repr, bad))})", event_id)
    return LaunchTrigger(kind=kind, instance_ids=good, event_id=event_id, rejected_ids=bad)


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}" for issue in error.errors()[:5]
    )


def _raw_id(raw: Mapping[Any, Any]) -> str | None:
    value = raw.get("id")
    return value if isinstance(value, str) else None

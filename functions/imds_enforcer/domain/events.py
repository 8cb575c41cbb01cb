"""The events the launch watch reacts to, as pydantic models, and what each one asks of it.

Real payloads vary (see ../shared/aws-samples/events): `responseElements` null (failed call) or absent (DryRun),
`errorCode`, camelCase `metadataOptions` in RunInstances but PascalCase keys under
`ModifyInstanceMetadataOptionsRequest`, numbers as strings, `instance-id` or `instance_id`, no `version`,
non-ISO `eventTime`. Everything that is not ours becomes an `Ignored` with a reason a person can read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from imds_enforcer.domain.door_events import DOOR_EVENT_SOURCES, DOOR_EVENTS, DoorTrigger, door_ids
from imds_enforcer.domain.guardrails import EC2_FUNCTIONS, service_role_name

INSTANCE_ID = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
LAUNCH_TEMPLATE_ID = re.compile(r"^lt-[0-9a-zA-Z]{1,32}$")
IMAGE_ID = re.compile(r"^ami-[0-9a-zA-Z]{1,32}$")
# The EventBridge source, and the CloudTrail eventSource its API calls carry.
EVENT_SOURCES = {"aws.ec2": "ec2.amazonaws.com", "aws.autoscaling": "autoscaling.amazonaws.com"}
CLOUDTRAIL_CALL = "AWS API Call via CloudTrail"
STATE_CHANGE = "EC2 Instance State-change Notification"
ACTIONABLE_STATES = frozenset({"pending", "running"})
SCHEDULED_EVENT = "Scheduled Event"


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
    # When it happened (the EventBridge envelope's time): a launch this close to an instance's first launch is new.
    event_time: datetime | None = None
    # Who made the call (CloudTrail's userIdentity.arn), for a regression: the person who set it back.
    caller: str | None = None


class SourceKind(StrEnum):
    """Where new instances come from: the launch-source checks (launch_source_sweep) take these."""

    LAUNCH_TEMPLATE = "launch_template"
    LAUNCH_CONFIGURATION = "launch_configuration"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class SourceTrigger:
    """Launch templates, launch configurations or AMIs a CloudTrail event created or changed."""

    kind: SourceKind
    resource_ids: tuple[str, ...]
    event_id: str
    event_name: str


# CloudTrail calls that create or change a launch source, and the kind each one names.
SOURCE_EVENTS = {
    "CreateLaunchTemplate": SourceKind.LAUNCH_TEMPLATE,
    "CreateLaunchTemplateVersion": SourceKind.LAUNCH_TEMPLATE,
    "ModifyLaunchTemplate": SourceKind.LAUNCH_TEMPLATE,
    "RegisterImage": SourceKind.IMAGE,
    "CreateLaunchConfiguration": SourceKind.LAUNCH_CONFIGURATION,
}


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """The events one launch watch invocation carries: a bare EventBridge event, or an SQS batch of them (EventBridge
    -> queue -> the function, so a burst of launches is one invocation and one report)."""

    events: tuple[object, ...]
    skipped: tuple[str, ...] = ()  # why each unreadable queue message was skipped
    from_queue: bool = False
    message_ids: tuple[str, ...] = ()  # the queue message of each event (from_queue), for partial batch responses


def read_batch(raw: object) -> Batch:
    """The events in an invocation. Never raises: an unreadable message is skipped with a reason (retrying it would
    not make it readable, and a poisoned message must not hold back the rest of the batch)."""
    records = raw.get("Records") if isinstance(raw, Mapping) else None
    if not (
        isinstance(records, list)
        and records
        and all(isinstance(record, Mapping) and record.get("eventSource") == "aws:sqs" for record in records)
    ):
        return Batch(events=(raw,))
    events: list[object] = []
    message_ids: list[str] = []
    skipped: list[str] = []
    for record in records:
        message_id = str(record.get("messageId", "?"))[:100]
        body = record.get("body")
        try:
            events.append(json.loads(body) if isinstance(body, str) else body)
        except (json.JSONDecodeError, RecursionError):
            skipped.append(f"SQS message {message_id}: body is not JSON")
        else:
            message_ids.append(message_id)
    return Batch(events=tuple(events), skipped=tuple(skipped), from_queue=True, message_ids=tuple(message_ids))


def read_launch_event(
    raw: object, *, account: str, region: str, service_role_path: str = ""
) -> LaunchTrigger | SourceTrigger | DoorTrigger | Ignored:
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
    if event.source in DOOR_EVENT_SOURCES and event.detail_type == CLOUDTRAIL_CALL:
        return _read_door_call(event, account=account, service_role_path=service_role_path)
    if event.source not in EVENT_SOURCES:
        return Ignored(f"event source is {event.source!r}, not 'aws.ec2' or 'aws.autoscaling'", event.id)
    if event.detail_type == STATE_CHANGE and event.source == "aws.ec2":
        return _read_state_change(event)
    if event.detail_type == CLOUDTRAIL_CALL:
        own = service_roles(account=account, region=region, path=service_role_path) if service_role_path else set()
        return _read_cloudtrail(event, account=account, service_roles=own)
    return Ignored(f"detail-type {event.detail_type!r} is not one the launch watch handles", event.id)


def _read_state_change(event: EnforcerEvent) -> LaunchTrigger | Ignored:
    try:
        change = StateChange.model_validate(event.detail)
    except ValidationError as error:
        return Ignored(f"malformed state-change detail: {_describe(error)}", event.id)
    if change.state not in ACTIONABLE_STATES:
        return Ignored(f"instance {change.instance_id} is {change.state}: nothing to enforce", event.id)
    return _trigger(TriggerKind.STATE_CHANGE, [change.instance_id], event)


def service_roles(*, account: str, region: str, path: str) -> set[str]:
    """The exact role ARNs whose calls are the service's own (its EC2-calling functions in this account and region):
    a role someone else creates under the same path, or with the same name in another path or account, is not one.
    The partition is whatever the caller's ARN says (the account and region already pin the deployment)."""
    names = {f"role{path}{service_role_name(function, region)}" for function in EC2_FUNCTIONS}
    return {f"iam::{account}:{name}" for name in names}


def _is_service_role(caller: str | None, own: set[str]) -> bool:
    # arn:<partition>:iam::<account>:role<path><name>, compared from "iam::" on, whatever the partition.
    parts = (caller or "").split(":", 2)
    return len(parts) == 3 and parts[0] == "arn" and parts[2] in own


def _read_call(event: EnforcerEvent, *, account: str, expected_source: str) -> CloudTrailCall | Ignored:
    """The CloudTrail record an event carries, if it is one worth reading: well formed, from the service its
    EventBridge source says, recorded for this account, and successful (a failed call changed nothing)."""
    try:
        call = CloudTrailCall.model_validate(event.detail)
    except ValidationError as error:
        return Ignored(f"malformed CloudTrail detail: {_describe(error)}", event.id)
    name = call.eventName
    if call.eventSource != expected_source:
        return Ignored(f"{name} from {call.eventSource}, not {expected_source}", event.id)
    if call.recipientAccountId not in (None, account):
        return Ignored(f"{name} recorded for account {call.recipientAccountId}, not {account}", event.id)
    if call.errorCode:
        return Ignored(f"{name} failed with {call.errorCode}: it changed nothing", event.id)
    return call


def _read_cloudtrail(
    event: EnforcerEvent, *, account: str, service_roles: set[str]
) -> LaunchTrigger | SourceTrigger | Ignored:
    call = _read_call(event, account=account, expected_source=EVENT_SOURCES[event.source])
    if isinstance(call, Ignored):
        return call
    name = call.eventName
    if name == "RunInstances":
        return _read_run_instances(call, event)
    if name == "ModifyInstanceMetadataOptions":
        return _read_modify(call, event, service_roles)
    if name in SOURCE_EVENTS:
        return _read_source_event(call, event.id, service_roles)
    return Ignored(f"CloudTrail event {name} is not one the launch watch handles", event.id)


def _read_run_instances(call: CloudTrailCall, event: EnforcerEvent) -> LaunchTrigger | Ignored:
    event_id = event.id
    if call.responseElements is None:
        return Ignored("RunInstances has no responseElements (dry run or failed call): no instance launched", event_id)
    try:
        response = RunInstancesResponse.model_validate(call.responseElements)
    except ValidationError as error:
        return Ignored(f"malformed RunInstances responseElements: {_describe(error)}", event_id)
    items = response.instancesSet.items if response.instancesSet else []
    if not items:
        return Ignored("RunInstances responseElements lists no instances", event_id)
    return _trigger(TriggerKind.RUN_INSTANCES, [item.instanceId for item in items], event)


def _read_modify(call: CloudTrailCall, event: EnforcerEvent, service_roles: set[str]) -> LaunchTrigger | Ignored:
    event_id = event.id
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
    if _is_service_role(caller, service_roles):
        return Ignored(f"{request.instance_id} was set to optional by this service ({caller}): a rollback", event_id)
    who = (call.userIdentity.arn if call.userIdentity else None) or caller
    return _trigger(TriggerKind.REGRESSION, [request.instance_id], event, caller=who)


def _read_source_event(call: CloudTrailCall, event_id: str, service_roles: set[str]) -> SourceTrigger | Ignored:
    """The launch template, AMI or launch configuration a successful call created or changed.

    The shapes read here come from AWS documentation examples and EventBridge patterns, not recorded payloads
    (none public): ids are looked for in responseElements first (CreateLaunchTemplateResponse.launchTemplate.
    launchTemplateId, CreateLaunchTemplateVersionResponse.launchTemplateVersion.launchTemplateId,
    ModifyLaunchTemplateResponse.launchTemplate.launchTemplateId, RegisterImage's imageId), then in
    requestParameters (ModifyLaunchTemplateRequest.LaunchTemplateId, CreateLaunchConfiguration's
    launchConfigurationName; that call's responseElements is null even on success), at any depth of
    Request/Response wrappers, camelCase or PascalCase.
    """
    name = call.eventName
    kind = SOURCE_EVENTS[name]
    caller = _caller_role_arn(call.userIdentity)
    if _is_service_role(caller, service_roles):
        # Our own fix (a new version, a new default) already reported what it did; checking it again mid-fix
        # could race the fix itself.
        return Ignored(f"{name} was made by this service ({caller})", event_id)
    if kind is SourceKind.LAUNCH_CONFIGURATION:
        found = _find_string(call.requestParameters, "launchconfigurationname")
        valid = found is not None and 0 < len(found) <= 255
    elif kind is SourceKind.IMAGE:
        found = _find_string(call.responseElements, "imageid")
        valid = found is not None and IMAGE_ID.match(found) is not None
    else:
        found = _find_string(call.responseElements, "launchtemplateid") or _find_string(
            call.requestParameters, "launchtemplateid"
        )
        valid = found is not None and LAUNCH_TEMPLATE_ID.match(found) is not None
    if found is None:
        return Ignored(f"{name} names no {kind.value.replace('_', ' ')} id the launch watch can read", event_id)
    if not valid:
        return Ignored(f"{name} names {found!r}, not a valid {kind.value.replace('_', ' ')} id", event_id)
    return SourceTrigger(kind=kind, resource_ids=(found,), event_id=event_id, event_name=name)


def _read_door_call(event: EnforcerEvent, *, account: str, service_role_path: str) -> DoorTrigger | Ignored:
    """A call that created or changed a door outside EC2 instances (SageMaker, Lightsail, Beanstalk, ...)."""
    expected_source = DOOR_EVENT_SOURCES[event.source]
    call = _read_call(event, account=account, expected_source=expected_source)
    if isinstance(call, Ignored):
        return call
    name = call.eventName
    door = DOOR_EVENTS[expected_source].get(name)
    if door is None:
        return Ignored(f"CloudTrail event {name} is not one the launch watch handles", event.id)
    caller = _caller_role_arn(call.userIdentity)
    if service_role_path and caller and f":role{service_role_path}" in caller:
        return Ignored(f"{name} was made by this service ({caller})", event.id)
    ids = door_ids(door, call.requestParameters, call.responseElements)
    if not ids:
        return Ignored(f"{name} names no {door.resource_type.replace('_', ' ')} the launch watch can read", event.id)
    return DoorTrigger(
        resource_type=door.resource_type, resource_ids=tuple(dict.fromkeys(ids)), event_id=event.id, event_name=name
    )


def _find_string(node: object, key: str, depth: int = 4) -> str | None:
    """The first string value under `key` (compared case-insensitively), breadth first, at most `depth` levels."""
    level: list[object] = [node]
    for _ in range(depth):
        deeper: list[object] = []
        for item in level:
            if not isinstance(item, Mapping):
                continue
            for name, value in item.items():
                if isinstance(name, str) and name.lower() == key and isinstance(value, str) and value.strip():
                    return value.strip()
            deeper.extend(value for value in item.values() if isinstance(value, Mapping))
        level = deeper
    return None


def _caller_role_arn(identity: UserIdentity | None) -> str | None:
    """The ARN of the role behind an assumed-role session; unlike the session ARN it includes the role's path."""
    if identity is None or identity.sessionContext is None or identity.sessionContext.sessionIssuer is None:
        return None
    return identity.sessionContext.sessionIssuer.arn


def _trigger(
    kind: TriggerKind, ids: list[str], event: EnforcerEvent, *, caller: str | None = None
) -> LaunchTrigger | Ignored:
    unique = list(dict.fromkeys(ids))
    good = tuple(instance_id for instance_id in unique if INSTANCE_ID.match(instance_id))
    bad = tuple(instance_id for instance_id in unique if not INSTANCE_ID.match(instance_id))
    if not good:
        return Ignored(f"no valid instance id in the event (got {', '.join(map(repr, bad))})", event.id)
    moment = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
    return LaunchTrigger(
        kind=kind, instance_ids=good, event_id=event.id, rejected_ids=bad, event_time=moment, caller=caller
    )


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}" for issue in error.errors()[:5]
    )


def _raw_id(raw: Mapping[Any, Any]) -> str | None:
    value = raw.get("id")
    return value if isinstance(value, str) else None


# --- the usage gate's trigger ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateTrigger:
    kind: str  # "schedule", "manual" or "continuation"
    event_id: str | None = None
    # A continuation: the sweep it continues, and the number of the run it starts (2 for the first continuation).
    sweep_id: str | None = None
    run: int | None = None


# The gate's own continuation (an EventBridge Scheduler one-time schedule's input): EventBridge-shaped, so the
# logger's correlation id and the checks below read it like the other events.
CONTINUATION_SOURCE = "imds-enforcer.gate"
CONTINUATION_DETAIL_TYPE = "Gate Continuation"
SWEEP_ID = re.compile(r"^[0-9A-Za-z-]{1,48}$")
MAX_RUN = 1000


def continuation_event(*, account: str, region: str, sweep_id: str, run: int, at: datetime) -> dict[str, Any]:
    """What the continuation schedule delivers: which sweep, which run. The plan itself stays in the sweep bucket."""
    return {
        "version": "0",
        "id": f"{sweep_id}-run-{run}",
        "source": CONTINUATION_SOURCE,
        "detail-type": CONTINUATION_DETAIL_TYPE,
        "account": account,
        "region": region,
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resources": [],
        "detail": {"sweep_id": sweep_id, "run": run},
    }


def read_gate_event(raw: object, *, account: str) -> GateTrigger | Ignored:
    """A scheduled event of this account, the gate's own continuation, or an empty manual invoke (`{}`), runs the
    sweep; anything else is logged and changes nothing (a foreign event must not make the gate modify instances)."""
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return GateTrigger(kind="manual")
    if not isinstance(raw, Mapping):
        return Ignored(f"event is a {type(raw).__name__}, not a JSON object")
    event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    if raw.get("source") == CONTINUATION_SOURCE and raw.get("detail-type") == CONTINUATION_DETAIL_TYPE:
        return _continuation(raw, event_id, account=account)
    if raw.get("source") != "aws.events" or raw.get("detail-type") != SCHEDULED_EVENT:
        return Ignored(
            f"source {raw.get('source')!r} / detail-type {raw.get('detail-type')!r} is not an EventBridge "
            "schedule (and not an empty manual invoke)",
            event_id,
        )
    if raw.get("account") not in (None, account):
        return Ignored(f"scheduled event from account {raw.get('account')}; this deployment serves {account}", event_id)
    return GateTrigger(kind="schedule", event_id=event_id)


def _continuation(raw: Mapping[Any, Any], event_id: str | None, *, account: str) -> GateTrigger | Ignored:
    if raw.get("account") != account:
        return Ignored(f"continuation from account {raw.get('account')}; this deployment serves {account}", event_id)
    detail = raw.get("detail")
    detail = detail if isinstance(detail, Mapping) else {}
    sweep_id, run = detail.get("sweep_id"), detail.get("run")
    if not isinstance(sweep_id, str) or not SWEEP_ID.match(sweep_id):
        return Ignored(f"continuation names no valid sweep id (got {sweep_id!r})", event_id)
    if isinstance(run, bool) or not isinstance(run, int) or not 2 <= run <= MAX_RUN:
        return Ignored(f"continuation names no valid run number (got {run!r})", event_id)
    return GateTrigger(kind="continuation", event_id=event_id, sweep_id=sweep_id, run=run)


# --- the rejection alarm's trigger --------------------------------------------------------------------------------

ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"


@dataclass(frozen=True, slots=True)
class AlarmTrigger:
    kind: str  # "alarm" or "manual"
    event_id: str | None = None
    alarm_name: str | None = None


def read_alarm_event(raw: object, *, account: str, region: str) -> AlarmTrigger | Ignored:
    """A CloudWatch alarm of this account and region going into ALARM (EventBridge), or an empty manual invoke,
    runs the rejection watch; an alarm going back to OK, or anything else, is logged and changes nothing."""
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return AlarmTrigger(kind="manual")
    if not isinstance(raw, Mapping):
        return Ignored(f"event is a {type(raw).__name__}, not a JSON object")
    event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    if raw.get("source") != "aws.cloudwatch" or raw.get("detail-type") != ALARM_STATE_CHANGE:
        return Ignored(
            f"source {raw.get('source')!r} / detail-type {raw.get('detail-type')!r} is not a CloudWatch alarm state "
            "change (and not an empty manual invoke)",
            event_id,
        )
    if raw.get("account") != account or raw.get("region") != region:
        return Ignored(
            f"alarm event from {raw.get('account')}/{raw.get('region')}; this deployment serves {account}/{region}",
            event_id,
        )
    detail = raw.get("detail")
    detail = detail if isinstance(detail, Mapping) else {}
    state = detail.get("state")
    state = state if isinstance(state, Mapping) else {}
    name = detail.get("alarmName") if isinstance(detail.get("alarmName"), str) else None
    if state.get("value") != "ALARM":
        return Ignored(f"alarm {name!r} is {state.get('value')!r}, not ALARM: nothing to watch", event_id)
    return AlarmTrigger(kind="alarm", event_id=event_id, alarm_name=name)

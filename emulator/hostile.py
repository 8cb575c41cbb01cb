"""Hostile inputs for every handler: hand-written ones (what a confused or malicious sender could put on EventBridge,
the queue or the topic) and generated ones (every key of a valid event dropped, or replaced by a value of the wrong
kind). Used by tests/integration/test_hostile_events.py and bench/reliability.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from emulator import ACCOUNT, REGION
from emulator.events import modify_options_event, run_instances_event, scheduled_event, state_change_event

# Values of every wrong kind a field could be given.
WRONG_VALUES: tuple[Any, ...] = (
    None,
    "",
    0,
    -1,
    1.5e308,
    True,
    [],
    {},
    "x" * 10_000,
    "<!channel> <https://evil.example|x> & ${jndi:ldap://x}",
    "'; DROP TABLE x; --",
    "\u0000\ud7ff\u202e",
    [{"a": [{"b": None}]}],
)

FOREIGN_ACCOUNT = "999999999999"


def _mutations(valid: dict[str, Any]) -> Iterator[Any]:
    """Each top-level and detail key dropped, and replaced by each wrong value."""
    for key in list(valid):
        dropped = copy.deepcopy(valid)
        del dropped[key]
        yield dropped
        for value in WRONG_VALUES[:4]:
            changed = copy.deepcopy(valid)
            changed[key] = value
            yield changed
    detail = valid.get("detail")
    if isinstance(detail, dict):
        for key in list(detail):
            for value in WRONG_VALUES[::3]:
                changed = copy.deepcopy(valid)
                changed["detail"][key] = value
                yield changed


def _foreign(event: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["account"] = FOREIGN_ACCOUNT
    return changed


def hand_written_launch_events(instance_id: str) -> list[Any]:
    """Events that must change nothing: not ours, not well formed, or naming nothing that exists."""
    run = run_instances_event([instance_id])
    sample: list[Any] = [
        None,
        "RunInstances",
        42,
        [run],
        {},
        {"detail": {}},
        _foreign(run),
        _foreign(state_change_event(instance_id)),
        {**run, "region": "eu-west-3"},
        {**run, "source": "my.app"},
        {**run, "detail-type": "EC2 Spot Instance Interruption Warning"},
        {**run, "detail": {**run["detail"], "eventSource": "s3.amazonaws.com"}},
        {**run, "detail": {**run["detail"], "recipientAccountId": FOREIGN_ACCOUNT}},
        {**run, "detail": {**run["detail"], "errorCode": "Client.UnauthorizedOperation"}},
        {**run, "detail": {**run["detail"], "responseElements": None}},
        {**run, "detail": {**run["detail"], "responseElements": {"instancesSet": {"items": []}}}},
        {**run, "detail": {**run["detail"], "responseElements": {"instancesSet": {"items": [{"instanceId": 7}]}}}},
        run_instances_event(["not-an-instance", "i-", "i-../../etc"]),
        state_change_event(instance_id, "stopped"),
        state_change_event(instance_id, "terminated"),
        state_change_event("i-0000000000000dead"),
        {**state_change_event(instance_id), "time": "yesterday"},
        {**state_change_event(instance_id), "detail": {"state": "running"}},
        modify_options_event(instance_id, "required"),
        # a rollback by a role that only looks like the service's: a regression, but in flag mode only reported
        {**run, "detail": {**run["detail"], "eventName": "TerminateInstances"}},
        {"Records": []},
        {"Records": [{"eventSource": "aws:sqs", "body": "{"}]},
        {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(_foreign(run))}]},
        {"Records": [{"eventSource": "aws:sqs", "body": "[1, 2]"}, {"eventSource": "aws:sqs", "body": "null"}]},
        {"Records": [{"eventSource": "aws:sns", "Sns": {"Message": json.dumps(run)}}]},
        {"Records": "not a list"},
        {"id": ["x"], "account": ACCOUNT, "region": REGION},
    ]
    deep: Any = {}
    for _ in range(200):
        deep = {"detail": deep}
    sample.append({**run, "detail": deep})
    sample.append({**run, "detail": {**run["detail"], "responseElements": {"instancesSet": {"items": [{}] * 500}}}})
    sample.append({**run, "detail-type": None})
    sample.append({**run, "resources": "arn:aws:ec2:::instance/*"})
    sample.append({**run, "detail": {**run["detail"], "eventName": "CreateLaunchTemplate", "responseElements": {}}})
    sample.append(
        {**run, "detail": {**run["detail"], "eventName": "RegisterImage", "responseElements": {"imageId": "x"}}}
    )
    sample.append({**run, "version": {"$ne": None}})
    sample.append({**run, "time": None})
    return sample


def generated_launch_events(instance_id: str) -> list[Any]:
    """Mutations of valid foreign-account events: however mangled, none may change anything here."""
    foreign = [_foreign(run_instances_event([instance_id])), _foreign(state_change_event(instance_id))]
    return [mutated for event in foreign for mutated in _mutations(event)]


def hand_written_gate_events() -> list[Any]:
    schedule = scheduled_event()
    return [
        "run",
        7,
        [schedule],
        {"source": "aws.events"},
        {"detail-type": "Scheduled Event"},
        {**schedule, "account": FOREIGN_ACCOUNT},
        {**schedule, "source": "aws.ec2"},
        {**schedule, "source": None},
        {**schedule, "detail-type": "Scheduled event"},
        {**schedule, "detail-type": ["Scheduled Event"]},
        run_instances_event(["i-0abc"]),
        state_change_event("i-0abc"),
        {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(schedule)}]},
        {"id": 1, "source": 2, "detail-type": 3},
        {"source": "aws.events", "detail-type": "Scheduled Event", "account": 123456789012},
    ]


def generated_gate_events() -> list[Any]:
    schedule = scheduled_event()
    found = []
    for key in ("source", "detail-type", "account"):
        for value in WRONG_VALUES:
            found.append({**schedule, key: value})
    return found


def hand_written_alarm_events() -> list[Any]:
    alarm = {
        "version": "0",
        "id": "a1",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": ACCOUNT,
        "time": "2026-12-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": {"alarmName": "rejected", "state": {"value": "ALARM"}},
    }
    return [
        "ALARM",
        [alarm],
        {**alarm, "account": FOREIGN_ACCOUNT},
        {**alarm, "region": "eu-west-3"},
        {**alarm, "source": "aws.ec2"},
        {**alarm, "detail": {"state": {"value": "OK"}}},
        {**alarm, "detail": {"state": "ALARM"}},
        {**alarm, "detail": "ALARM"},
        {**alarm, "detail": {"state": {"value": "INSUFFICIENT_DATA"}}},
        *({**alarm, key: value} for key in ("source", "detail-type", "account", "region") for value in WRONG_VALUES),
        *({**alarm, "detail": {"state": {"value": value}}} for value in WRONG_VALUES),
    ]


def hostile_sns_events() -> list[Any]:
    """SNS-to-Lambda events whose messages are not reports (skipped), or reports whose fields carry markup."""

    def record(message: Any) -> dict[str, Any]:
        return {"EventSource": "aws:sns", "Sns": {"MessageId": "m", "Message": message}}

    messages: list[Any] = [None, "", "{", "[]", "null", '{"AlarmName": 5}', '{"schema": "imds-enforcer/report/v1"}']
    messages += [json.dumps({"findings": value}) for value in WRONG_VALUES]
    messages += [json.dumps(value) for value in WRONG_VALUES]
    # (an alarm whose name is a string is a real alarm message and would be posted: test_slack_blocks covers those)
    messages += [
        json.dumps({"AlarmName": value, "NewStateValue": value}) for value in WRONG_VALUES if not isinstance(value, str)
    ]
    events: list[Any] = [None, {}, {"Records": None}, {"Records": [None, 1, "x"]}, {"Records": [{"EventSource": "s3"}]}]
    events += [{"Records": [record(message)]} for message in messages]
    return events

"""The stack's state table: what was last reported about each instance, so that a verdict is reported when it
changes, not on every event (a stop/start-scheduled fleet restarts every morning); and the durable record of every
switch the service made (domain/switches.py), until it is reported and tagged.

One DynamoDB item per instance (`pk` = ``verdict#<instance id>``), expiring after VERDICT_TTL_DAYS (DynamoDB's TTL
deletes it), so an instance nobody has seen for a month is reported afresh. BatchGetItem reads 100 keys a call,
BatchWriteItem writes 25; unprocessed keys and items (throttling) are retried a few times, then given up on: the
ledger only mutes repeats, so a missed read reports again and a missed write mutes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated
from imds_enforcer.domain.switches import SwitchRecord
from imds_enforcer.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import WriteRequestTypeDef

VERDICT_TTL_DAYS = 30
GET_LIMIT = 100
WRITE_LIMIT = 25
ATTEMPTS = 4
# Before asking again for what a batch left unprocessed (the table's capacity was short): 50 ms, then doubled.
BACKOFF_SECONDS = 0.05


def _batch_get(table: str, keys: Sequence[Mapping[str, Any]], **options: Any) -> tuple[list[Any], int]:
    """BatchGetItem of the keys (distinct: DynamoDB refuses a call with a key twice), GET_LIMIT a call, unprocessed
    keys asked again with backoff: the items, and how many keys were still unprocessed after ATTEMPTS calls."""
    items: list[Any] = []
    unread = 0
    for start in range(0, len(keys), GET_LIMIT):
        pending: list[Any] = list(keys[start : start + GET_LIMIT])
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            request: Any = {table: {"Keys": pending, **options}}
            response: Any = clients.dynamodb().batch_get_item(RequestItems=request)
            items.extend(response.get("Responses", {}).get(table, []))
            pending = list(response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", []))
            if not pending:
                break
        unread += len(pending)
    return items, unread


def _batch_write(table: str, requests: Sequence[WriteRequestTypeDef]) -> int:
    """BatchWriteItem in chunks of WRITE_LIMIT, unprocessed items sent again with backoff: how many were still
    unwritten after ATTEMPTS calls per chunk."""
    unwritten = 0
    for start in range(0, len(requests), WRITE_LIMIT):
        batch: list[Any] = list(requests[start : start + WRITE_LIMIT])
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            written: Any = clients.dynamodb().batch_write_item(RequestItems={table: batch})
            batch = list(written.get("UnprocessedItems", {}).get(table, []))
            if not batch:
                break
        unwritten += len(batch)
    return unwritten


def _key(instance_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"verdict#{instance_id}"}}


def last_verdicts(table: str, instance_ids: Sequence[str]) -> dict[str, str]:
    """Instance id -> the verdict last recorded for it (instances never recorded are absent)."""
    with translated("BatchGetItem"):
        items, unread = _batch_get(
            table,
            [_key(instance_id) for instance_id in dict.fromkeys(instance_ids)],
            ProjectionExpression="pk, verdict",
        )
    if unread:
        logger.warning("ledger read incomplete: those instances are reported again", extra={"keys": unread})
    return {str(item["pk"]["S"]).removeprefix("verdict#"): str(item["verdict"]["S"]) for item in items}


def record_verdicts(table: str, verdicts: Mapping[str, str], *, now: datetime) -> None:
    """Remember what was just reported about each instance."""
    expires = int((now + timedelta(days=VERDICT_TTL_DAYS)).timestamp())
    requests: list[WriteRequestTypeDef] = [
        {
            "PutRequest": {
                "Item": {
                    **_key(instance_id),
                    "verdict": {"S": verdict},
                    "reported_at": {"S": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
                    "expires_at": {"N": str(expires)},
                }
            }
        }
        for instance_id, verdict in verdicts.items()
    ]
    with translated("BatchWriteItem"):
        unwritten = _batch_write(table, requests)
    if unwritten:
        logger.warning("ledger write incomplete: those verdicts may be reported again", extra={"items": unwritten})


# --- switch records (domain/switches.py): one item per instance the service switched ------------------------------

SWITCH_PREFIX = "switch#"
# A sparse global secondary index: only open records (not yet reported, or not yet tagged) carry its key, so the
# gate's one Query reads exactly those, however large the table.
PENDING_INDEX = "pending"
PENDING_ATTRIBUTE = "pending"
PENDING_VALUE = "switch"


def _switch_key(instance_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"{SWITCH_PREFIX}{instance_id}"}}


def _switch_item(record: SwitchRecord, *, watch_days: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        **_switch_key(record.instance_id),
        "instance_id": {"S": record.instance_id},
        "enforced_epoch": {"N": f"{record.enforced_at.timestamp():.6f}"},
        "enforced_by": {"S": record.enforced_by},
        "event_id": {"S": record.event_id or "-"},
        "stamp": {"S": record.stamp},
        "reason": {"S": record.reason},
        "token": {"S": record.token},
        "tagged": {"BOOL": record.tagged},
        "reported": {"BOOL": record.reported},
        "expires_at": {"N": str(int(record.expires_at(watch_days).timestamp()))},
    }
    if record.hop_limit is not None:
        item["hop_limit"] = {"N": str(record.hop_limit)}
    if record.open:
        item[PENDING_ATTRIBUTE] = {"S": PENDING_VALUE}
    return item


def _switch_record(item: Mapping[str, Any]) -> SwitchRecord:
    hop_limit = item.get("hop_limit", {}).get("N")
    return SwitchRecord(
        instance_id=str(item["instance_id"]["S"]),
        enforced_at=datetime.fromtimestamp(float(item["enforced_epoch"]["N"]), UTC),
        enforced_by=str(item["enforced_by"]["S"]),
        event_id=str(item.get("event_id", {}).get("S", "-")),
        stamp=str(item.get("stamp", {}).get("S", "")),
        reason=str(item.get("reason", {}).get("S", "HttpTokens set to required")),
        hop_limit=None if hop_limit is None else int(hop_limit),
        token=str(item.get("token", {}).get("S", "")),
        tagged=bool(item.get("tagged", {}).get("BOOL", False)),
        reported=bool(item.get("reported", {}).get("BOOL", False)),
    )


def record_switch(
    table: str, record: SwitchRecord, *, observed_before: datetime, watch_days: int
) -> SwitchRecord | None:
    """Record a switch, unless another run recorded one of this instance after `observed_before` (when this run read
    the instance as optional): then that run made the change, ours changed nothing, and its record is returned.

    The token clause lets botocore's own retry of this very write (after a lost answer) find its item and succeed."""
    try:
        with translated("PutItem"):
            clients.dynamodb().put_item(
                TableName=table,
                Item=_switch_item(record, watch_days=watch_days),
                ConditionExpression="attribute_not_exists(pk) OR enforced_epoch < :observed OR #token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={
                    ":observed": {"N": f"{observed_before.timestamp():.6f}"},
                    ":token": {"S": record.token},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
    except AwsError as error:
        if error.code != "ConditionalCheckFailedException":
            raise
        cause: Any = error.__cause__
        old = getattr(cause, "response", {}).get("Item")
        return _switch_record(old) if old else switch_records(table, [record.instance_id]).get(record.instance_id)
    return None


def switch_records(table: str, instance_ids: Sequence[str]) -> dict[str, SwitchRecord]:
    """Instance id -> its switch record (consistent reads: a retry must see what its earlier attempt wrote)."""
    with translated("BatchGetItem"):
        items, unread = _batch_get(
            table, [_switch_key(instance_id) for instance_id in dict.fromkeys(instance_ids)], ConsistentRead=True
        )
    if unread:
        raise AwsError("BatchGetItem", "UnprocessedKeys", f"{unread} switch records not read")
    records = [_switch_record(item) for item in items]
    return {record.instance_id: record for record in records}


def open_switches(table: str) -> list[SwitchRecord]:
    """Every open switch record (not yet reported, or not yet tagged), from the sparse index."""
    paginator = clients.dynamodb().get_paginator("query")
    records: list[SwitchRecord] = []
    with translated("Query"):
        for page in paginator.paginate(
            TableName=table,
            IndexName=PENDING_INDEX,
            KeyConditionExpression="#pending = :pending",
            ExpressionAttributeNames={"#pending": PENDING_ATTRIBUTE},
            ExpressionAttributeValues={":pending": {"S": PENDING_VALUE}},
        ):
            records.extend(_switch_record(item) for item in page.get("Items", []))
    return records


def save_switches(table: str, records: Sequence[SwitchRecord], *, watch_days: int) -> None:
    """Write the records as they now stand (reported, tagged): a settled one leaves the index."""
    requests: list[WriteRequestTypeDef] = [
        {"PutRequest": {"Item": _switch_item(record, watch_days=watch_days)}} for record in records
    ]
    with translated("BatchWriteItem"):
        unwritten = _batch_write(table, requests)
    if unwritten:
        raise AwsError("BatchWriteItem", "UnprocessedItems", f"{unwritten} switch records not written")

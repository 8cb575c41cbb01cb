"""The stack's state table: what was last reported about each instance, so that a verdict is reported when it
changes, not on every event (a stop/start-scheduled fleet restarts every morning).

One DynamoDB item per instance (`pk` = ``verdict#<instance id>``), expiring after VERDICT_TTL_DAYS (DynamoDB's TTL
deletes it), so an instance nobody has seen for a month is reported afresh. BatchGetItem reads 100 keys a call,
BatchWriteItem writes 25; unprocessed keys and items (throttling) are retried a few times, then given up on: the
ledger only mutes repeats, so a missed read reports again and a missed write mutes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated
from imds_enforcer.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import WriteRequestTypeDef

VERDICT_TTL_DAYS = 30
GET_LIMIT = 100
WRITE_LIMIT = 25
ATTEMPTS = 4


def _key(instance_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"verdict#{instance_id}"}}


def last_verdicts(table: str, instance_ids: Sequence[str]) -> dict[str, str]:
    """Instance id -> the verdict last recorded for it (instances never recorded are absent)."""
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(instance_ids))
    with translated("BatchGetItem"):
        for start in range(0, len(unique), GET_LIMIT):
            keys: list[dict[str, Any]] = [_key(instance_id) for instance_id in unique[start : start + GET_LIMIT]]
            for _ in range(ATTEMPTS):
                response: Any = clients.dynamodb().batch_get_item(
                    RequestItems={table: {"Keys": keys, "ProjectionExpression": "pk, verdict"}}
                )
                for item in response.get("Responses", {}).get(table, []):
                    found[str(item["pk"]["S"]).removeprefix("verdict#")] = str(item["verdict"]["S"])
                keys = list(response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", []))
                if not keys:
                    break
            if keys:
                logger.warning("ledger read incomplete: those instances are reported again", extra={"keys": len(keys)})
    return found


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
        for start in range(0, len(requests), WRITE_LIMIT):
            batch = requests[start : start + WRITE_LIMIT]
            for _ in range(ATTEMPTS):
                written: Any = clients.dynamodb().batch_write_item(RequestItems={table: batch})
                batch = list(written.get("UnprocessedItems", {}).get(table, []))
                if not batch:
                    break
            if batch:
                logger.warning(
                    "ledger write incomplete: those verdicts may be reported again", extra={"items": len(batch)}
                )

"""S3 adapter for the usage gate's sweep in progress: one object per stack, gzip-compressed JSON.

The stack's sweep bucket is encrypted, TLS-only and not public; its objects expire by a lifecycle rule, so a sweep
that never finishes leaves nothing behind for long. Runs of the gate never overlap (reserved concurrency 1), so a
plain put is enough: no two writers race for the object.
"""

from __future__ import annotations

import gzip

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated

STATE_KEY = "sweeps/active.json.gz"
_ABSENT = frozenset({"NoSuchKey", "404", "NotFound"})


def load(bucket: str) -> str | None:
    """The sweep in progress (JSON text), or None when there is none."""
    try:
        with translated("GetObject"):
            body = clients.s3().get_object(Bucket=bucket, Key=STATE_KEY)["Body"].read()
    except AwsError as error:
        if error.code in _ABSENT:
            return None
        raise
    return gzip.decompress(body).decode()


def save(bucket: str, state_json: str) -> int:
    """Store the sweep in progress; returns the stored (compressed) size in bytes."""
    body = gzip.compress(state_json.encode(), compresslevel=6)
    with translated("PutObject"):
        clients.s3().put_object(
            Bucket=bucket,
            Key=STATE_KEY,
            Body=body,
            ContentType="application/gzip",
            ServerSideEncryption="AES256",
        )
    return len(body)


def delete(bucket: str) -> None:
    """The sweep is over (its report is out)."""
    with translated("DeleteObject"):
        clients.s3().delete_object(Bucket=bucket, Key=STATE_KEY)

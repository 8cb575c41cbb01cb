"""Which account and region this function serves, from the Lambda context (no AWS call needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Deployment:
    account: str
    region: str

    @classmethod
    def from_context(cls, context: Any, *, default_region: str = "") -> Deployment:
        """From the invoked function's ARN (``arn:aws:lambda:<region>:<account>:function:<name>``); the region
        falls back to ``default_region`` (the handler passes the runtime's AWS_REGION) where the ARN has none."""
        parts = str(getattr(context, "invoked_function_arn", "")).split(":")
        if len(parts) < 6 or parts[2] != "lambda":
            raise ValueError(f"cannot read account and region from the Lambda context ARN {':'.join(parts)!r}")
        return cls(account=parts[4], region=parts[3] or default_region)

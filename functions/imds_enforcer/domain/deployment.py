"""Which account and region this function serves, from the Lambda context (no AWS call needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Deployment:
    account: str
    region: str

    @classmethod
    def from_context(cls, context: Any) -> Deployment:
        # arn:aws:lambda:<region>:<account>:function:<name>
        parts = str(getattr(context, "invoked_function_arn", "")).split(":")
        if len(parts) < 6 or parts[2] != "lambda":
            raise ValueError(f"cannot read account and region from the Lambda context ARN {':'.join(parts)!r}")
        region = parts[3] or os.environ.get("AWS_REGION", "")
        return cls(account=parts[4], region=region)

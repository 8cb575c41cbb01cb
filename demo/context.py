"""A Lambda context with what Powertools and the handlers read (the demo must not depend on the test suite)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class DemoLambdaContext:
    function_name: str
    account: str = "123456789012"
    region: str = "us-east-1"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "d3m0d3m0-0000-4000-8000-000000000000"
    timeout_ms: int = 900_000  # the usage gate budgets its work against the remaining time
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.timeout_ms - int((time.monotonic() - self._started) * 1000))

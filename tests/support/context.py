"""A Lambda context as Powertools and the handlers read it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class FakeLambdaContext:
    account: str = "123456789012"
    region: str = "us-east-1"
    function_name: str = "imds-enforcer-test"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    # Milliseconds the invocation may still run when the context is made; real time counts down from there.
    remaining_ms: int = 900_000
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed_ms = int((time.monotonic() - self._started) * 1000)
        return max(0, self.remaining_ms - elapsed_ms)


class RunningOutContext(FakeLambdaContext):
    """Plenty of time for the first `budget` looks at the clock, then `then_ms` left (below the run's margin)."""

    def __init__(self, budget: int, *, then_ms: int = 0) -> None:
        super().__init__()
        self._answers: Iterator[int] = iter([900_000] * budget)
        self._then_ms = then_ms

    def get_remaining_time_in_millis(self) -> int:
        return next(self._answers, self._then_ms)

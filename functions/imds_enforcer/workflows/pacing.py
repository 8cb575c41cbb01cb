"""Pacing ModifyInstanceMetadataOptions to EC2's own limit, and slowing down when the account's other callers share it.

EC2 throttles API requests per account and Region with token buckets, and ModifyInstanceMetadataOptions has a bucket
of its own: 100 tokens, refilled at 5 a second; an empty bucket answers `RequestLimitExceeded` (HTTP 503)
(https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html). The bucket is shared with everything
else in the account and Region that calls the action, so the documented rate is a ceiling, not a promise.

The Pacer mirrors that bucket: it starts full (`burst`) and refills at the documented rate, so a sweep alone in the
account runs at the floor, (N - burst) / rate. On a throttle (someone else took tokens) it applies AIMD to its refill
rate: the rate halves (multiplicative decrease, down to MIN_RATE) and the mirrored bucket is emptied, since EC2 just
said it is; every success adds INCREASE_PER_SUCCESS back (additive increase), never above the documented rate.
Consecutive halvings space the retries out (0.4 s, 0.8 s, 1.6 s, ... 10 s); after MAX_CONSECUTIVE_THROTTLES in a row
the pacer is `exhausted` and the caller stops modifying for this run (the gate carries the rest to its continuation).

botocore's standard retry mode would retry a throttle up to 5 times inside one call, sleeping on its own backoff while
the pacer keeps its old rate: the modifies therefore use a client with one retry only (aws/clients.py), which absorbs
a lone transient error, and a throttle that persists reaches the caller at once. The pacer learns from every
RequestLimitExceeded all the same, the one that retry absorbed included (the client counts them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from imds_enforcer.aws.clients import THROTTLE_CODES
from imds_enforcer.aws.errors import AwsError

DECREASE_FACTOR = 0.5
# From half the documented rate back to all of it in 50 successes (about 10-20 s at those rates).
INCREASE_PER_SUCCESS = 0.05
MIN_RATE = 0.1  # one modify every 10 s at worst
MAX_CONSECUTIVE_THROTTLES = 8  # about 40 s of backing off from 5/s: then the run leaves the rest to the next one


class Clock(Protocol):
    """Time as a run sees it: the real one in Lambda; a simulated one in the benchmark's time model."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def now(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> datetime:
        return datetime.now(UTC)


def is_throttle(error: AwsError) -> bool:
    return error.code in THROTTLE_CODES


@dataclass(frozen=True, slots=True)
class PacerSnapshot:
    """What a continuation needs to resume the pacing where the last run left it (wall-clock epoch seconds)."""

    rate: float
    tokens: float
    at: float


class Pacer:
    """A token bucket in front of ModifyInstanceMetadataOptions (EC2: a burst of 100, then 5 per second), with AIMD
    on its refill rate. `acquire()` before each modify; then `succeeded()` or `throttled()`."""

    def __init__(
        self,
        *,
        burst: int,
        rate_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._ceiling = rate_per_second
        self._rate = rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self.waited_seconds = 0.0
        self.throttles = 0
        self._consecutive_throttles = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def exhausted(self) -> bool:
        """EC2 kept refusing even at the slowest pace: stop modifying in this run."""
        return self._consecutive_throttles >= MAX_CONSECUTIVE_THROTTLES

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def acquire(self) -> None:
        self._refill()
        if self._tokens < 1:
            wait = (1 - self._tokens) / self._rate
            self._sleep(wait)
            self.waited_seconds += wait
            self._tokens = 1.0
            self._last = self._clock()
        self._tokens -= 1

    def succeeded(self) -> None:
        self._consecutive_throttles = 0
        self._rate = min(self._ceiling, self._rate + INCREASE_PER_SUCCESS)

    def throttled(self, count: int = 1) -> None:
        """EC2 answered RequestLimitExceeded (`count` times in one call): its bucket is empty, and someone else is
        drawing on it. One decrease per call, like one loss event."""
        self.throttles += count
        self._consecutive_throttles += 1
        self._refill()
        self._tokens = 0.0
        self._rate = max(MIN_RATE, self._rate * DECREASE_FACTOR)

    def snapshot(self, *, wall_now: float) -> PacerSnapshot:
        self._refill()
        return PacerSnapshot(rate=self._rate, tokens=self._tokens, at=wall_now)

    def resume(self, snapshot: PacerSnapshot, *, wall_now: float) -> None:
        """Continue from another run's pacing: its rate, and its bucket refilled for the time in between (EC2's own
        bucket refilled meanwhile too). A new sweep starts from the documented rate and a full bucket instead."""
        self._rate = min(self._ceiling, max(MIN_RATE, snapshot.rate))
        elapsed = max(0.0, wall_now - snapshot.at)
        self._tokens = min(self._capacity, max(0.0, snapshot.tokens) + elapsed * self._rate)
        self._last = self._clock()

"""The pacer: EC2's documented bucket mirrored, AIMD when the account's other callers share it."""

from __future__ import annotations

import pytest

from imds_enforcer.aws.errors import AwsError
from imds_enforcer.workflows.pacing import (
    DECREASE_FACTOR,
    INCREASE_PER_SUCCESS,
    MAX_CONSECUTIVE_THROTTLES,
    MIN_RATE,
    Pacer,
    PacerSnapshot,
    is_throttle,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def pacer(clock: FakeClock, *, burst: int = 100, rate: float = 5.0) -> Pacer:
    return Pacer(burst=burst, rate_per_second=rate, clock=clock.monotonic, sleep=clock.sleep)


def test_a_full_bucket_then_the_documented_rate() -> None:
    # Given a fresh pacer (EC2's bucket: 100, then 5 a second)
    clock = FakeClock()
    paced = pacer(clock)
    # When 1,100 modifies go through it back to back
    for _ in range(1100):
        paced.acquire()
        paced.succeeded()
    # Then the first 100 waited for nothing and the rest came at 5 a second: (1100 - 100) / 5 = 200 s
    assert clock.slept[:1] == [pytest.approx(0.2)]
    assert len(clock.slept) == 1000
    assert clock.t == pytest.approx(200.0)
    assert paced.waited_seconds == pytest.approx(200.0)


def test_a_throttle_halves_the_rate_and_empties_the_bucket() -> None:
    # Given a pacer with tokens to spare
    clock = FakeClock()
    paced = pacer(clock)
    paced.acquire()
    # When EC2 throttles a modify
    paced.throttled()
    # Then the rate halves and the next modify waits for a whole token at the new rate (EC2 said its bucket is empty)
    assert paced.rate == 5.0 * DECREASE_FACTOR
    paced.acquire()
    assert clock.slept == [pytest.approx(1 / (5.0 * DECREASE_FACTOR))]
    assert paced.throttles == 1


def test_successes_add_the_rate_back_but_never_above_the_documented_rate() -> None:
    clock = FakeClock()
    paced = pacer(clock)
    paced.throttled()
    halved = paced.rate
    for _ in range(10):
        paced.succeeded()
    assert paced.rate == pytest.approx(halved + 10 * INCREASE_PER_SUCCESS)
    for _ in range(1000):
        paced.succeeded()
    assert paced.rate == 5.0


def test_consecutive_throttles_back_off_then_exhaust_the_run() -> None:
    clock = FakeClock()
    paced = pacer(clock)
    waits = []
    for _ in range(MAX_CONSECUTIVE_THROTTLES):
        assert not paced.exhausted
        paced.throttled()
        before = clock.t
        paced.acquire()
        waits.append(clock.t - before)
    # Then each wait is longer than the last until the slowest pace, and the pacer says stop for this run
    assert waits == sorted(waits)
    assert waits[-1] == pytest.approx(1 / MIN_RATE)
    assert paced.exhausted
    # A success in between starts the count again
    paced.succeeded()
    assert not paced.exhausted


def test_one_call_with_several_throttles_counts_them_all_and_decreases_once() -> None:
    paced = pacer(FakeClock())
    paced.throttled(2)
    assert paced.throttles == 2
    assert paced.rate == 5.0 * DECREASE_FACTOR


def test_a_continuation_resumes_the_rate_and_the_bucket_refilled_meanwhile() -> None:
    # Given a run that ended slowed down, its bucket empty
    first = pacer(FakeClock())
    first.throttled()
    snapshot = first.snapshot(wall_now=1000.0)
    assert snapshot == PacerSnapshot(rate=2.5, tokens=0.0, at=1000.0)
    # When the next run resumes 10 s later
    clock = FakeClock()
    second = pacer(clock)
    second.resume(snapshot, wall_now=1010.0)
    # Then it keeps the slower rate, with the tokens 10 s at that rate gave back (25), not a full bucket
    assert second.rate == 2.5
    for _ in range(25):
        second.acquire()
    assert clock.slept == []
    second.acquire()
    assert clock.slept == [pytest.approx(0.4)]


def test_what_counts_as_a_throttle() -> None:
    assert is_throttle(AwsError("ModifyInstanceMetadataOptions", "RequestLimitExceeded"))
    assert not is_throttle(AwsError("ModifyInstanceMetadataOptions", "UnauthorizedOperation"))

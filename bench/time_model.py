"""Time to enforce a whole fleet, modelled: the real gate and continuation code on a simulated clock.

    python -m bench.bench_gate --time-model

What runs for real: `run_gate` (the sweep, its chunked evidence and decisions, the continuation's saved state and
its schedule), `enforce` (the re-check of each paced batch, the AIMD pacer, the throttle handling), the report and
its SNS parts, the sweep bucket adapter (gzip JSON) and the scheduler adapter. What is simulated: the clock (a run's
sleeps and AWS latencies advance it; the Lambda context's remaining time reads it), and AWS below the adapters:
- EC2's ModifyInstanceMetadataOptions bucket as documented (100 tokens, refilled at 5 a second, per account and
  Region: https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html); an empty bucket answers
  RequestLimitExceeded, after the one retry the paced client makes (botocore's first backoff, 0.5 s on average);
- the other calls, at the latencies in LATENCY (chosen, not measured: typical figures for these APIs in one Region);
- EventBridge Scheduler: a one-time schedule fires CONTINUATION_FIRE_DELAY after its at() time (its documented
  precision is 60 s: the model takes the middle, and prints the worst case too), then Lambda's asynchronous invoke;
- Lambda: the gate's timeout and deadline margin as deployed (15 minutes, 60 s), a cold start for the first run and
  warm ones after (the same execution environment, reserved concurrency 1).

`seconds` is the time from the first run's invocation to the last successful modify; `floor` is (N - burst) / rate,
the physical limit of EC2's bucket.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from imds_enforcer.aws import clients, cloudwatch, ec2
from imds_enforcer.aws.cloudwatch import MAX_QUERIES_PER_CALL, MetricRequest
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.metric_names import NO_TOKEN
from imds_enforcer.domain.settings import EnforcementMode, Settings
from imds_enforcer.domain.usage import MetricSeries
from imds_enforcer.workflows import usage_gate
from imds_enforcer.workflows.launch_source_sweep import SourceOutcome

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:imds-enforcer-usage-gate"
EPOCH = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
SCHEDULED = {
    "id": "time-model",
    "source": "aws.events",
    "detail-type": "Scheduled Event",
    "account": ACCOUNT,
    "region": REGION,
    "time": EPOCH.isoformat(),
    "detail": {},
}

# EC2's documented bucket for ModifyInstanceMetadataOptions.
BUCKET_SIZE = 100
REFILL_PER_SECOND = 5.0
# Seconds per call (per page where the call pages).
LATENCY = {
    "DescribeInstances.page": 1.5,  # a page of 1,000 instances
    "DescribeInstances.recheck": 0.25,  # an instance-id filter of up to 50
    "DescribeImages": 0.3,
    "GetMetricData": 1.5,  # 500 queries, 14 days at 2-hour periods: 84,000 datapoints, one page
    "ModifyInstanceMetadataOptions": 0.15,
    "RequestLimitExceeded": 0.05,  # the refusal comes back quicker than a change
    "botocore.backoff": 0.5,  # the paced client's one retry, after botocore's first (jittered) backoff
    "CreateTags": 0.3,
    "Publish": 0.05,
    "S3": 0.05,  # plus the object's size at S3_BYTES_PER_SECOND
    "CreateSchedule": 0.1,
    "launch.source.check": 0.5,
    "lambda.cold_start": 1.5,
    "lambda.warm_start": 0.1,
    "lambda.async_dispatch": 0.2,
}
S3_BYTES_PER_SECOND = 50e6
CONTINUATION_FIRE_DELAY = 30.0  # seconds after the at() time: the middle of Scheduler's 60 s precision
WORST_FIRE_DELAY = 59.0
TIMEOUT_SECONDS = 15 * 60  # as deployed (gate_timeout_minutes)
SIZES = (1_000, 10_000, 50_000)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)


@dataclass
class World:
    """The simulated account: the fleet, EC2's bucket (shared with `background_rate` modifies/s of others)."""

    clock: VirtualClock
    size: int
    background_rate: float = 0.0
    tokens: float = BUCKET_SIZE
    refilled_at: float = 0.0
    required: set[str] = field(default_factory=set)
    modifies: Counter[str] = field(default_factory=Counter)
    last_enforced_at: float = 0.0
    throttled: int = 0  # RequestLimitExceeded answers, retried by the client or not
    metric_calls: int = 0
    objects: dict[str, bytes] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        first = EPOCH - timedelta(days=30)
        self.instances = [
            InstanceFacts(
                instance_id=f"i-{index:017x}",
                state="running",
                http_tokens="optional",
                hop_limit=1,
                http_endpoint="enabled",
                first_launch_time=first,
                launch_time=first,
                image_id="ami-0123456789abcdef0",
            )
            for index in range(self.size)
        ]
        self.by_id = {facts.instance_id: facts for facts in self.instances}

    def wait(self, key: str) -> None:
        self.clock.sleep(LATENCY[key])

    def take_token(self) -> bool:
        now = self.clock.t
        # Others draw on the same bucket at their own rate: what is left for us refills at the difference.
        self.tokens = min(
            BUCKET_SIZE, self.tokens + (now - self.refilled_at) * (REFILL_PER_SECOND - self.background_rate)
        )
        self.refilled_at = now
        if self.tokens >= 1 - 1e-9:  # a pacer exactly on the documented rate is not refused for a rounding error
            self.tokens = max(self.tokens, 1.0)
            self.tokens -= 1
            return True
        return False

    def live(self, facts: InstanceFacts) -> InstanceFacts:
        return replace(facts, http_tokens="required") if facts.instance_id in self.required else facts

    # --- the EC2 adapter ---------------------------------------------------------------------------------------

    def iter_instances_by_tokens(self, http_tokens: str) -> Iterator[InstanceFacts]:
        for start in range(0, len(self.instances), 1000):
            self.wait("DescribeInstances.page")
            for facts in self.instances[start : start + 1000]:
                if (facts.instance_id in self.required) == (http_tokens == "required"):
                    yield facts

    def iter_instances_tagged(self, tag_key: str) -> Iterator[InstanceFacts]:
        self.wait("DescribeInstances.page")  # nothing enforced yet in this region: one empty page
        return iter(())

    def image_names(self, image_ids: Sequence[str]) -> dict[str, str]:
        self.wait("DescribeImages")
        return {}

    def describe_by_ids(self, instance_ids: Sequence[str]) -> list[InstanceFacts]:
        self.wait("DescribeInstances.recheck")
        return [self.live(self.by_id[instance_id]) for instance_id in instance_ids]

    def throttled_attempts(self) -> int:
        return self.throttled

    def require_tokens(self, instance_id: str, *, hop_limit: int | None, paced: bool = False) -> None:
        for attempt in range(2):  # the paced client: one send, one retry
            if self.take_token():
                self.wait("ModifyInstanceMetadataOptions")
                self.required.add(instance_id)
                self.modifies[instance_id] += 1
                self.last_enforced_at = self.clock.t
                return
            self.wait("RequestLimitExceeded")
            self.throttled += 1
            if attempt == 0:
                self.wait("botocore.backoff")
        raise AwsError("ModifyInstanceMetadataOptions", "RequestLimitExceeded", "Request limit exceeded.")

    def tag_instances(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> None:
        for _ in range(0, len(list(instance_ids)), 1000):
            self.wait("CreateTags")

    # --- the CloudWatch adapter: every instance quiet, one datapoint a day of each metric -----------------------

    def fetch_series(
        self, requests: Sequence[MetricRequest], *, start: datetime, end: datetime
    ) -> dict[MetricRequest, MetricSeries]:
        calls = math.ceil(len(requests) / MAX_QUERIES_PER_CALL)
        self.metric_calls += calls
        self.clock.sleep(calls * LATENCY["GetMetricData"])
        days = int((end - start).total_seconds() // 86400)
        moments = [start + timedelta(days=day, hours=1) for day in range(days)]
        return {
            request: MetricSeries.of((moment, 0.0 if request.metric_name == NO_TOKEN else 3.0) for moment in moments)
            for request in requests
        }


class FakeS3:
    def __init__(self, world: World) -> None:
        self.world = world

    def _transfer(self, size: int) -> None:
        self.world.clock.sleep(LATENCY["S3"] + size / S3_BYTES_PER_SECOND)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        if Key not in self.world.objects:
            self._transfer(0)
            raise AwsError("GetObject", "NoSuchKey")
        body = self.world.objects[Key]
        self._transfer(len(body))
        return {"Body": _Body(body)}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self._transfer(len(Body))
        self.world.objects[Key] = Body
        return {}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self._transfer(0)
        self.world.objects.pop(Key, None)
        return {}


@dataclass
class _Body:
    content: bytes

    def read(self) -> bytes:
        return self.content


class FakeScheduler:
    def __init__(self, world: World) -> None:
        self.world = world

    def create_schedule(self, **request: Any) -> dict[str, Any]:
        self.world.clock.sleep(LATENCY["CreateSchedule"])
        self.world.schedules.append(request)
        return {
            "ScheduleArn": f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/{request['GroupName']}/{request['Name']}"
        }


class FakeSns:
    def __init__(self, world: World) -> None:
        self.world = world

    def publish(self, *, Message: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        self.world.clock.sleep(LATENCY["Publish"])
        self.world.reports.append(json.loads(Message))
        return {"MessageId": f"m-{len(self.world.reports)}"}


def _source_check(world: World) -> Any:
    def check(settings: Settings) -> SourceOutcome:
        world.wait("launch.source.check")
        return SourceOutcome()

    return check


@dataclass(frozen=True)
class Result:
    size: int
    runs: int
    seconds: float
    floor: float
    evidence_calls: int
    modified_twice: int
    enforced: int
    sweeps_reported: int  # distinct sweep ids among the published parts
    reported_enforced: int
    reported_failed: int
    reported_throttles: int

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor


@contextlib.contextmanager
def _simulated(world: World) -> Iterator[None]:
    patches: list[Any] = [
        mock.patch.object(ec2, "iter_instances_by_tokens", world.iter_instances_by_tokens),
        mock.patch.object(ec2, "iter_instances_tagged", world.iter_instances_tagged),
        mock.patch.object(ec2, "image_names", world.image_names),
        mock.patch.object(ec2, "describe_by_ids", world.describe_by_ids),
        mock.patch.object(ec2, "require_tokens", world.require_tokens),
        mock.patch.object(ec2, "throttled_attempts", world.throttled_attempts),
        mock.patch.object(ec2, "tag_instances", world.tag_instances),
        mock.patch.object(cloudwatch, "fetch_series", world.fetch_series),
        mock.patch.object(clients, "s3", return_value=FakeS3(world)),
        mock.patch.object(clients, "scheduler", return_value=FakeScheduler(world)),
        mock.patch.object(clients, "sns", return_value=FakeSns(world)),
        mock.patch.object(
            usage_gate, "SOURCE_CHECKS", tuple((name, _source_check(world)) for name, _ in usage_gate.SOURCE_CHECKS)
        ),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def simulate(size: int, *, fire_delay: float = CONTINUATION_FIRE_DELAY, background_rate: float = 0.0) -> Result:
    clock = VirtualClock()
    world = World(clock=clock, size=size, background_rate=background_rate)
    settings = Settings(
        ENFORCEMENT_MODE=EnforcementMode.FIX,
        REPORT_TOPIC_ARN=f"arn:aws:sns:{REGION}:{ACCOUNT}:imds-enforcer-reports",
        SWEEP_STATE_BUCKET="imds-enforcer-sweeps",
        CONTINUATION_SCHEDULE_GROUP="imds-enforcer-gate",
        CONTINUATION_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/imds-enforcer-scheduler",
        CONTINUATION_DEAD_LETTER_ARN=f"arn:aws:sqs:{REGION}:{ACCOUNT}:imds-enforcer-gate-dlq",
    )
    deployment = Deployment(account=ACCOUNT, region=REGION)
    event: dict[str, Any] = SCHEDULED
    runs = 0
    clock.sleep(LATENCY["lambda.cold_start"])
    with _simulated(world):
        while True:
            runs += 1
            started = clock.t

            def remaining_ms(started: float = started) -> int:
                return int((TIMEOUT_SECONDS - (clock.t - started)) * 1000)

            before = len(world.schedules)
            outcome = usage_gate.run_gate(
                event,
                settings=settings,
                deployment=deployment,
                remaining_ms=remaining_ms,
                publish=True,
                function_arn=FUNCTION_ARN,
                clock=clock,
            )
            assert clock.t - started <= TIMEOUT_SECONDS, f"run {runs} overran the Lambda timeout"
            if outcome.status != "continued":
                break
            (schedule,) = world.schedules[before:]
            at = datetime.strptime(schedule["ScheduleExpression"], "at(%Y-%m-%dT%H:%M:%S)").replace(tzinfo=UTC)
            fires = (at - EPOCH).total_seconds() + fire_delay
            # Reserved concurrency 1: the next run cannot start before this one has returned.
            clock.t = max(clock.t, fires) + LATENCY["lambda.async_dispatch"] + LATENCY["lambda.warm_start"]
            event = json.loads(schedule["Target"]["Input"])
    last = world.reports[-1]
    return Result(
        size=size,
        runs=runs,
        seconds=world.last_enforced_at,
        floor=(size - BUCKET_SIZE) / REFILL_PER_SECOND,
        evidence_calls=world.metric_calls,
        modified_twice=sum(1 for count in world.modifies.values() if count > 1),
        enforced=len(world.required),
        sweeps_reported=len({report["sweep_id"] for report in world.reports}),
        reported_enforced=last["run_counts"].get("enforced", 0),
        reported_failed=last["run_counts"].get("failed", 0),
        reported_throttles=last["totals"]["throttles"],
    )


def main(sizes: Sequence[int] = SIZES) -> None:
    import logging
    import resource
    import tracemalloc

    logging.getLogger("imds-enforcer").setLevel(logging.ERROR)
    results, peaks = [], []
    for size in sizes:
        # Memory too: the real gate code holds what a run holds (the simulated region's instances counted with it).
        tracemalloc.start()
        results.append(simulate(size))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    for result in results:
        print(
            f"time_to_enforce n={result.size} runs={result.runs} seconds={result.seconds:.0f} "
            f"floor={result.floor:.0f} ratio={result.ratio:.2f}"
        )
    for result, peak in zip(results, peaks, strict=True):
        print(f"memory n={result.size} tracemalloc_peak_mib={peak / 2**20:.0f} (the simulated region included)")
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory max_rss_mib={maxrss_mib:.0f} (this process, after the largest size)")
    for result in results:
        print(
            f"evidence_calls n={result.size} get_metric_data={result.evidence_calls} "
            f"floor={math.ceil(2 * result.size / MAX_QUERIES_PER_CALL)}"
        )
    for result in results:
        # The model is only worth its numbers if the sweep did its job: each instance once, one report.
        assert result.enforced == result.reported_enforced == result.size, result
        assert result.modified_twice == 0, result
        assert result.sweeps_reported == 1, result
        assert result.reported_failed == 0, result
    print(
        "model: EC2 bucket 100 + 5/s (documented); latencies "
        + ", ".join(f"{key} {value:g} s" for key, value in LATENCY.items())
        + f"; S3 {S3_BYTES_PER_SECOND / 1e6:g} MB/s; continuation fires {CONTINUATION_FIRE_DELAY:g} s after at(); "
        f"Lambda timeout {TIMEOUT_SECONDS} s, deadline margin {Settings().DEADLINE_MARGIN_SECONDS} s"
    )
    for size in sizes:
        worst = simulate(size, fire_delay=WORST_FIRE_DELAY)
        print(
            f"worst_case_fire n={size} runs={worst.runs} seconds={worst.seconds:.0f} floor={worst.floor:.0f} "
            f"ratio={worst.ratio:.2f} (every continuation {WORST_FIRE_DELAY:g} s after its at())"
        )
    shared = simulate(10_000, background_rate=1.0)
    print(
        f"shared_bucket n=10000 other_callers=1/s runs={shared.runs} seconds={shared.seconds:.0f} "
        f"floor_for_our_share={(10_000 - BUCKET_SIZE) / (REFILL_PER_SECOND - 1.0):.0f} "
        f"throttles={shared.reported_throttles} failed={shared.reported_failed} enforced={shared.reported_enforced} "
        f"modified_twice={shared.modified_twice} sweeps_reported={shared.sweeps_reported}"
    )

"""Benchmark the organization audit on moto: the parallel audit's wall time next to a serial run of the same audit in
the same process, and the API calls per account-region against the floor.

    python -m bench.bench_org [--accounts 20] [--regions us-east-1,eu-west-1,ap-southeast-2] [--instances 200]
                              [--workers 8] [--latency-ms 0]

moto runs as a server in a child process (taught what it lacks there), so the audit's threads wait on HTTP as they
would on AWS. The organization is seeded with real boto3 calls: the accounts, the StackSet's audit role in each,
and per account-region one RunInstances of the optional instances and one of the required ones (a reservation
each: the audit's DescribeInstances pages by instances, not reservations, so nothing needs one per reservation),
a launch template, and 14 days of zero `MetadataNoToken` for `--metrics` of the optional ones (10 by default: moto's
GetMetricData costs queries x stored datapoints in Python, 4 s a call with all 150 seeded, which would measure moto;
on AWS it is one call either way, and the call counts are the same).

moto answers in about a millisecond on the loopback and serializes its work in one process, so its wall times say
little about AWS, where each call takes tens of milliseconds on the network: `--latency-ms N` adds that wait to
every call the audit makes (a client-side sleep before the request is sent) to show what the pool buys there.
The call counts are the point: they do not grow with the instances (no per-instance call).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

DEFAULT_REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
IMAGE = "ami-12c6146b"
REQUIRED_SHARE = 0.25  # a quarter of each account-region's instances already require IMDSv2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _serve(port: int, commands: Connection) -> None:
    """The moto server's process: taught, serving until told to stop."""
    from moto.server import ThreadedMotoServer

    from emulator.moto_ext import teach_moto

    teach_moto()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    commands.send("ready")
    commands.recv()
    server.stop()
    commands.send("stopped")


@dataclass(frozen=True)
class Shape:
    accounts: int
    regions: tuple[str, ...]
    instances: int
    with_metrics: int = 10  # optional instances per account-region with 14 days of data

    @property
    def required(self) -> int:
        return math.floor(self.instances * REQUIRED_SHARE)

    @property
    def optional(self) -> int:
        return self.instances - self.required

    def floor(self) -> dict[str, int]:
        """The calls one account-region's audit cannot do without (AWS's page sizes), whatever the fleet."""
        return {
            # optional instances, the watch listing (tag enforced-at), the required count: 1,000 a page
            "DescribeInstances": max(1, math.ceil(self.optional / 1000)) + 1 + max(1, math.ceil(self.required / 1000)),
            "GetMetricData": math.ceil(self.optional / 500),  # 500 queries a call
            "DescribeLaunchTemplates": 1,
            "DescribeLaunchTemplateVersions": 1,
            "DescribeLaunchConfigurations": 1,
            "DescribeAutoScalingGroups": 1,
            # the instances' AMIs (one call per 200 distinct ones: the fleet runs one AMI), and the account's own AMIs
            "DescribeImages": 2,
            "GetInstanceMetadataDefaults": 1,
            # the IMDS doors outside EC2 instances: one listing per service (ListClusters: EKS and EMR)
            "ListNotebookInstances": 1,
            "GetInstances": 1,
            "DescribeEnvironments": 1,
            "DescribeComputeEnvironments": 1,
            "ListClusters": 2,
            "DescribeCapacityProviders": 1,
        }


@dataclass
class Recorder:
    """Counts every call per (account, region), and optionally sleeps before each send (emulated latency)."""

    latency_seconds: float = 0.0
    calls: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, session: Any, account: str, region: str) -> None:
        with self.lock:
            counter = self.calls.setdefault((account, region), Counter())

        def on_call(model: Any, **_: Any) -> None:
            with self.lock:
                counter[model.name] += 1

        session.events.register("provide-client-params.*.*", on_call)
        if self.latency_seconds:
            session.events.register("before-send.*.*", lambda **_: time.sleep(self.latency_seconds))


@dataclass
class Run:
    workers: int
    seconds: float
    cpu_seconds: float  # this process only (every thread): the audit's own work, not moto's (the child's)
    result: Any  # OrgAuditResult
    recorder: Recorder
    management_calls: Counter[str]


@dataclass
class BenchResult:
    shape: Shape
    seed_seconds: float
    parallel: Run
    serial: Run
    latency_ms: float

    @property
    def ratio(self) -> float:
        return self.serial.seconds / self.parallel.seconds

    def per_account_region(self) -> dict[str, tuple[int, int]]:
        """Each operation's (min, max) count over the audited account-regions (the parallel run)."""
        counters = [
            counter for (account, _), counter in self.parallel.recorder.calls.items() if account != self.management
        ]
        names = sorted({name for counter in counters for name in counter})
        return {name: (min(c[name] for c in counters), max(c[name] for c in counters)) for name in names}

    @property
    def management(self) -> str:
        return str(self.parallel.result.caller_account)

    @property
    def at_floor(self) -> bool:
        """Every member account-region made exactly the floor's calls, and no other kind."""
        spreads = self.per_account_region()
        floor = self.shape.floor()
        return set(spreads) == set(floor) and all(spreads[name] == (count, count) for name, count in floor.items())


def _seed(shape: Shape) -> None:
    from emulator.organization import create_organization, member_session

    org = create_organization()
    org.add_unit("Workloads")
    now = datetime.now(UTC)
    for index in range(shape.accounts):
        member = org.add_member(f"workload-{index:03}", unit="Workloads")
        for region in shape.regions:
            session = member_session(member.account_id, region)
            ec2, cloudwatch = session.client("ec2"), session.client("cloudwatch")
            optional = ec2.run_instances(
                ImageId=IMAGE,
                MinCount=shape.optional,
                MaxCount=shape.optional,
                MetadataOptions={"HttpTokens": "optional"},
            )["Instances"]
            if shape.required:
                ec2.run_instances(
                    ImageId=IMAGE,
                    MinCount=shape.required,
                    MaxCount=shape.required,
                    MetadataOptions={"HttpTokens": "required"},
                )
            ec2.create_launch_template(
                LaunchTemplateName="legacy",
                LaunchTemplateData={"ImageId": IMAGE, "MetadataOptions": {"HttpTokens": "optional"}},
            )
            data: list[Any] = [
                {
                    "MetricName": "MetadataNoToken",
                    "Dimensions": [{"Name": "InstanceId", "Value": item["InstanceId"]}],
                    "Timestamp": now - timedelta(days=day, hours=3),
                    "Value": 0.0,
                }
                for item in optional[: shape.with_metrics]
                for day in range(14)
            ]
            for start in range(0, len(data), 1000):
                cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=data[start : start + 1000])


def _audit(shape: Shape, workers: int, latency_seconds: float) -> Run:
    import boto3

    from imds_enforcer_cli.org_audit import run_org_audit

    recorder = Recorder(latency_seconds=latency_seconds)
    management_calls: Counter[str] = Counter()
    session = boto3.session.Session()
    session.events.register("provide-client-params.*.*", lambda model, **_: management_calls.update([model.name]))
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_org_audit(regions=shape.regions, max_workers=workers, session=session, on_session=recorder)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return Run(workers, seconds, cpu_seconds, result, recorder, management_calls)


# Totals that measure time, not what the audit found: they differ between any two runs.
TIMING_TOTALS = frozenset({"sweep_seconds", "modify_wait_seconds"})


def _picture(run: Run) -> list[tuple[Any, ...]]:
    """What the audit found, account-region by account-region (the same, however many workers)."""
    return [
        (
            item.account.id,
            item.region,
            item.status,
            item.report.counts,
            {name: value for name, value in item.report.totals.items() if name not in TIMING_TOTALS},
        )
        for item in run.result.results
    ]


def run_benchmark(shape: Shape, *, workers: int, latency_ms: float = 0.0) -> BenchResult:
    port = _free_port()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, child), daemon=True)
    server.start()
    parent.recv()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=shape.regions[0],
        AWS_REGION=shape.regions[0],
        POWERTOOLS_LOG_LEVEL="WARNING",
        POWERTOOLS_METRICS_NAMESPACE="ImdsEnforcer",
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    try:
        started = time.perf_counter()
        _seed(shape)
        seed_seconds = time.perf_counter() - started
        latency = latency_ms / 1000
        parallel = _audit(shape, workers, latency)
        serial = _audit(shape, 1, latency)
    finally:
        parent.send("stop")
        parent.recv()
        server.join(timeout=10)
        os.environ.clear()
        os.environ.update(saved)
    if _picture(parallel) != _picture(serial):
        raise RuntimeError("the parallel and the serial audit disagree")
    return BenchResult(shape, seed_seconds, parallel, serial, latency_ms)


def print_report(bench: BenchResult) -> None:
    shape = bench.shape
    audited = len(bench.parallel.result.results)
    print(
        f"Organization audit: {shape.accounts} member accounts (+ the management account) x {len(shape.regions)} "
        f"regions x {shape.instances} instances ({shape.optional} optional, {shape.required} required; "
        f"{min(shape.with_metrics, shape.optional)} with metric data), moto server in a child process"
        + (f", {bench.latency_ms:g} ms emulated latency per call" if bench.latency_ms else "")
    )
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"seeding: {bench.seed_seconds:.1f} s; account-regions audited: {audited}; "
        f"load average {load} on {os.cpu_count()} CPUs"
    )
    for run in (bench.parallel, bench.serial):
        label = f"parallel ({run.workers} workers)" if run is bench.parallel else "serial (1 worker)"
        print(
            f"{label}: {run.seconds:.2f} s wall; the audit's own CPU {run.cpu_seconds:.2f} s "
            f"({1000 * run.cpu_seconds / audited:.0f} ms per account-region; the rest is moto's and waiting)"
        )
    print(f"ratio serial / parallel: {bench.ratio:.2f}x")
    floor = shape.floor()
    print("API calls per member account-region (min-max over all of them; floor from AWS's page sizes):")
    for name, (low, high) in bench.per_account_region().items():
        spread = str(low) if low == high else f"{low}-{high}"
        print(f"  {name}: {spread} (floor {floor.get(name, 0)})")
    management = dict(sorted(bench.parallel.management_calls.items()))
    print(f"management account's own calls: {management} (one AssumeRole per member account)")
    print(f"at the floor (no per-instance call): {'yes' if bench.at_floor else 'NO'}")


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=20, help="member accounts")
    parser.add_argument("--regions", default=",".join(DEFAULT_REGIONS), help="regions, comma-separated")
    parser.add_argument("--instances", type=int, default=200, help="instances per account-region")
    parser.add_argument("--metrics", type=int, default=10, help="optional instances per account-region with data")
    parser.add_argument("--workers", type=int, default=8, help="the parallel run's pool size")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="emulated network latency per call")
    args = parser.parse_args(argv)
    shape = Shape(
        accounts=args.accounts,
        regions=tuple(region.strip() for region in args.regions.split(",") if region.strip()),
        instances=args.instances,
        with_metrics=args.metrics,
    )
    bench = run_benchmark(shape, workers=args.workers, latency_ms=args.latency_ms)
    print_report(bench)
    sys.stdout.flush()
    return bench


if __name__ == "__main__":
    main()

"""Benchmark the usage gate against a moto server: API calls per operation against the floor, wall time, memory.

    python -m bench.bench_gate [--sizes 1000,10000] [--ready 20]
    python -m bench.bench_gate --time-model      # time to enforce 1k/10k/50k ready instances (bench/time_model.py)

moto runs in a child process (taught what it lacks there, where it serves), so that the memory figures measure the
gate alone. The fleet is seeded inside that process, one instance per reservation: moto counts reservations against
DescribeInstances' MaxResults, so this gives the pages of 1,000 instances AWS would return (and the memory they
cost). `--ready` of them get 14 days of zero `MetadataNoToken` and a launch time 30 days back, so the run enforces
exactly that many (fix mode). moto's GetMetricData costs queries x periods x stored datapoints, so its wall time
says little about AWS: the call counts and the memory are the point.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import resource
import socket
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from emulator import ACCOUNT, REGION

ROOT = Path(__file__).resolve().parent.parent

OPERATIONS = (
    "DescribeInstances",
    "DescribeImages",
    "GetMetricData",
    "ModifyInstanceMetadataOptions",
    "CreateTags",
    "Publish",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _serve(port: int, commands: Connection) -> None:
    """The moto server's process: teach moto, serve, and age instances on request (LaunchTime is not settable)."""
    from moto.ec2.models import ec2_backends
    from moto.server import ThreadedMotoServer

    from emulator.moto_ext import teach_moto

    teach_moto()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request drowns the table
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    commands.send("ready")
    while True:
        command, payload = commands.recv()
        if command == "seed":
            backend = ec2_backends[ACCOUNT][REGION]
            options = {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}
            seeded = [
                instance.id
                for _ in range(payload)
                for instance in backend.run_instances(
                    "ami-12c6146b",
                    1,
                    None,
                    [],
                    instance_type="t3.micro",
                    is_instance_type_default=False,
                    metadata_options=options,
                ).instances
            ]
            commands.send(seeded)
        elif command == "age":
            from emulator.fleet import backdate_launch

            ids, days = payload
            backdate_launch(ids, days)  # the first launch (primary interface, root volume) and LaunchTime
            commands.send("aged")
        else:
            server.stop()
            commands.send("stopped")
            return


@dataclass
class Result:
    size: int
    ready: int
    seed_seconds: float
    run_seconds: float
    calls: Counter[str]
    metric_queries: list[int]
    tracemalloc_peak_mb: float
    rss_delta_mb: float
    totals: dict[str, int]

    @property
    def floor(self) -> dict[str, int]:
        return {
            # The optional listing, plus one page for the watch listing (instances tagged enforced-at), plus one
            # re-check of the live instances per paced batch of 50 modifies.
            "DescribeInstances": math.ceil(self.size / 1000) + 1 + math.ceil(self.ready / 50),
            # The instances' AMIs (one AMI here: one call per 200 distinct AMIs), and the own-AMI launch-source check.
            "DescribeImages": 2,
            # MetadataNoToken and the running reference (CPUUtilization) for every optional instance, 500 a call.
            "GetMetricData": math.ceil(2 * self.size / 500),
            "ModifyInstanceMetadataOptions": self.ready,
            "CreateTags": 1 if self.ready else 0,
            "Publish": self.calls["Publish"],  # one per report part (SNS: 256 KB a message)
        }


def _seed(size: int, ready: int, commands: Connection) -> list[str]:
    import boto3

    commands.send(("seed", size))
    ids: list[str] = commands.recv()
    chosen = ids[:ready]
    commands.send(("age", (chosen, 30)))
    commands.recv()
    now = datetime.now(UTC)
    cloudwatch = boto3.client("cloudwatch")
    # One MetadataNoToken (zero) and one CPUUtilization (it ran) datapoint a day: enough for the gate's day slices.
    data: list[Any] = [
        {
            "MetricName": metric,
            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
            "Timestamp": now - timedelta(days=day, hours=3),
            "Value": value,
        }
        for instance_id in chosen
        for day in range(14)
        for metric, value in (("MetadataNoToken", 0.0), ("CPUUtilization", 3.0))
    ]
    for start in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=data[start : start + 1000])
    return ids


def run_size(size: int, ready: int, commands: Connection) -> Result:
    import boto3

    from emulator.observe import CallCounter
    from imds_enforcer.aws import clients
    from imds_enforcer.handlers.usage_gate import handler
    from tests.support.context import FakeLambdaContext

    topic = boto3.client("sns").create_topic(Name=f"imds-enforcer-bench-{size}")["TopicArn"]
    os.environ.update(ENFORCEMENT_MODE="fix", REPORT_TOPIC_ARN=topic)
    started = time.perf_counter()
    _seed(size, ready, commands)
    seed_seconds = time.perf_counter() - started

    clients.reset_clients()
    counter = CallCounter().attach(
        clients.ec2(), clients.ec2_paced(), clients.cloudwatch(), clients.sns(), clients.autoscaling()
    )

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    summary = handler({}, FakeLambdaContext(account=ACCOUNT, region=REGION, remaining_ms=900_000))
    run_seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    totals = summary["totals"]
    assert isinstance(totals, dict)
    return Result(
        size=size,
        ready=ready,
        seed_seconds=seed_seconds,
        run_seconds=run_seconds,
        calls=counter.counts,
        metric_queries=counter.metric_queries,
        tracemalloc_peak_mb=peak / 2**20,
        rss_delta_mb=(rss_after - rss_before) / 1024,  # Linux: KiB
        totals=totals,
    )


def print_table(results: list[Result]) -> None:
    header = ["N", *OPERATIONS, "seed s", "run s", "peak MiB", "rss +MiB"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for result in results:
        cells = [str(result.size)]
        cells += [f"{result.calls[op]} (floor {result.floor[op]})" for op in OPERATIONS]
        cells += [
            f"{result.seed_seconds:.1f}",
            f"{result.run_seconds:.1f}",
            f"{result.tracemalloc_peak_mb:.1f}",
            f"{result.rss_delta_mb:.1f}",
        ]
        print(" | ".join(cells))
    for result in results:
        print(
            f"N={result.size}: GetMetricData queries per call {result.metric_queries}; totals {result.totals}; "
            f"other calls { {k: v for k, v in result.calls.items() if k not in OPERATIONS} }"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--ready", type=int, default=20, help="instances per fleet with 14 clean days (enforced)")
    parser.add_argument(
        "--time-model",
        action="store_true",
        help="model the time to enforce 1k, 10k and 50k ready instances (the real gate on a simulated clock)",
    )
    args = parser.parse_args(argv)
    if args.time_model:
        from bench import time_model

        time_model.main()
        return
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]

    port = _free_port()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, child), daemon=True)
    server.start()
    parent.recv()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        POWERTOOLS_LOG_LEVEL="WARNING",
        POWERTOOLS_METRICS_NAMESPACE="ImdsEnforcer",
    )
    results = []
    try:
        for size in sizes:
            # A fresh account for each size (moto's own reset endpoint).
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
            results.append(run_size(size, min(args.ready, size), parent))
            print(f"N={size}: done in {results[-1].run_seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        parent.send(("stop", None))
        parent.recv()
        server.join(timeout=10)
    print_table(results)


if __name__ == "__main__":
    main()

"""Launch watch benchmark: cold import next to bare boto3, AWS calls for one 50-instance launch, the layer's size.

Prints figures against the goals; asserts nothing about timings (they depend on the machine). Run it with
`python -m bench.bench_launch` (or `python -m bench` for every benchmark).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

from bench import ROOT
from demo.show import table

HANDLER_MODULE = "imds_enforcer.handlers.launch_watch"
IMPORT_RUNS = 7
IMPORT_RATIO_GOAL = 1.3
LAUNCH_SIZE = 50
DEFAULT_LAYER_PYTHON = "3.13"


# (1) cold import ---------------------------------------------------------------------------------------------------
def _import_seconds(module: str) -> float:
    """One import in a fresh interpreter, timed inside it so interpreter start-up is not counted."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "functions")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip())


# Who brings which module: self times from `-X importtime`, summed per family, say where the handler's import goes.
FAMILIES = {
    "boto3 and its deps": ("boto3", "botocore", "s3transfer", "urllib3", "jmespath", "dateutil", "six"),
    "pydantic": ("pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"),
    "aws_lambda_powertools": ("aws_lambda_powertools",),
    "imds_enforcer (own code, incl. model building)": ("imds_enforcer",),
}


def import_breakdown(module: str = HANDLER_MODULE) -> dict[str, float]:
    """Seconds of import per family of modules (one run: for proportions, not for the headline figure)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "functions")}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    totals: Counter[str] = Counter()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        root = name.split(".")[0]
        family = next((label for label, roots in FAMILIES.items() if root in roots), "stdlib and other")
        totals[family] += int(self_us)
    return {family: micros / 1_000_000 for family, micros in totals.most_common()}


def measure_imports(runs: int = IMPORT_RUNS) -> dict[str, float]:
    medians: dict[str, float] = {}
    for module in ("boto3", HANDLER_MODULE):
        _import_seconds(module)  # warm-up: writes .pyc files, so every measured run reads the same bytecode
        medians[module] = statistics.median(_import_seconds(module) for _ in range(runs))
    return medians


# (2) AWS calls for one launch ----------------------------------------------------------------------------------------
def count_launch_calls(size: int = LAUNCH_SIZE) -> tuple[Counter[str], float, int]:
    """One RunInstances event naming ``size`` optional instances, fix mode, against a moto server.

    Returns the calls per operation, the handler's wall time on moto, and how many instances ended required.
    """
    # Before the handler import: Powertools reads these when the Logger and Metrics are created.
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    import boto3

    from demo.context import DemoLambdaContext
    from emulator import ACCOUNT, REGION
    from emulator.events import run_instances_event
    from emulator.observe import CallCounter, Inbox
    from emulator.server import start_server, use_endpoint
    from imds_enforcer.aws import clients
    from imds_enforcer.handlers import launch_watch

    with start_server() as local:
        use_endpoint(local.endpoint_url, region=REGION)
        ec2 = boto3.client("ec2")
        launched = ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=size,
            MaxCount=size,
            InstanceType="t3.micro",
            MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1},
        )
        instance_ids = [item["InstanceId"] for item in launched["Instances"]]
        inbox = Inbox.create("bench-launch-reports")
        os.environ["ENFORCEMENT_MODE"] = "fix"
        os.environ["REPORT_TOPIC_ARN"] = inbox.topic_arn

        counter = CallCounter().attach(clients.ec2(), clients.sns(), clients.cloudwatch())
        context = DemoLambdaContext(function_name="bench-launch-watch", account=ACCOUNT, region=REGION)
        started = time.perf_counter()
        launch_watch.handler(run_instances_event(instance_ids, account=ACCOUNT, region=REGION), context)
        elapsed = time.perf_counter() - started
        calls = counter.take()

        items = [
            item
            for reservation in ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
            for item in reservation["Instances"]
        ]
        required = sum(1 for item in items if item["MetadataOptions"]["HttpTokens"] == "required")
    return calls, elapsed, required


# (3) the layer -----------------------------------------------------------------------------------------------------
def _layer_python_version() -> str:
    # The infra picks the Lambda runtime; measure the layer it would ship. Importing the CDK costs a few seconds.
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")  # jsii banner on Node 20
    try:
        from infra.constructs.enforcer_function import runtime_python_version
    except ImportError:
        return DEFAULT_LAYER_PYTHON
    return runtime_python_version()


def _build_layer(out_dir: Path, python_version: str) -> Path:
    requirements = ROOT / "functions" / "requirements.txt"
    try:
        from infra.layer import build_dependencies_layer
    except ImportError:
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(out_dir / "python"),
            "--platform", "manylinux2014_aarch64", "--python-version", python_version,
            "--implementation", "cp", "--only-binary=:all:",
            "-r", str(requirements),
        ]  # fmt: skip
        subprocess.run(command, check=True)
        return out_dir
    return build_dependencies_layer(requirements=requirements, out_dir=out_dir, python_version=python_version)


def measure_layer() -> tuple[str, int, int, int]:
    """Build the layer into a temporary folder; returns (python version, files, unzipped bytes, zipped bytes)."""
    python_version = _layer_python_version()
    with tempfile.TemporaryDirectory(prefix="imds-layer-") as tmp:
        layer = _build_layer(Path(tmp) / "layer", python_version)
        files = [path for path in (layer / "python").rglob("*") if path.is_file()]
        unzipped = sum(path.stat().st_size for path in files)
        archive = Path(tmp) / "layer.zip"
        # The layer ships as a deflated zip with python/ at its root, as CDK's asset packaging makes it.
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
            for path in files:
                zipped.write(path, path.relative_to(layer))
        return python_version, len(files), unzipped, archive.stat().st_size


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def main() -> None:
    print("Launch watch benchmark")

    print(
        f"\n(1) cold import, median of {IMPORT_RUNS} fresh interpreters (goal: handler <= {IMPORT_RATIO_GOAL}x boto3)"
    )
    imports = measure_imports()
    boto3_seconds = imports["boto3"]
    handler_seconds = imports[HANDLER_MODULE]
    ratio = handler_seconds / boto3_seconds
    print(
        table(
            ["import", "median", "x boto3"],
            [
                ["boto3", f"{boto3_seconds * 1000:.0f} ms", "1.00"],
                [HANDLER_MODULE, f"{handler_seconds * 1000:.0f} ms", f"{ratio:.2f}"],
            ],
        )
    )
    print(f"  goal {'met' if ratio <= IMPORT_RATIO_GOAL else 'NOT met'}: {ratio:.2f}x (goal <= {IMPORT_RATIO_GOAL}x)")
    print("  where the handler's import goes (python -X importtime, self times per family, one run):")
    breakdown = import_breakdown()
    print(table(["family", "time"], [[family, f"{seconds * 1000:.0f} ms"] for family, seconds in breakdown.items()]))

    print(f"\n(2) AWS calls for one RunInstances event with {LAUNCH_SIZE} optional instances, fix mode (moto server)")
    calls, elapsed, required = count_launch_calls()
    # One DescribeImages for the AMI families (a container host gets hop limit 2 whatever its tags).
    goals = {
        "DescribeInstances": 1,
        "DescribeImages": 1,
        "ModifyInstanceMetadataOptions": LAUNCH_SIZE,
        "CreateTags": 1,
        "Publish": 1,
    }
    rows = [
        [
            operation,
            calls.get(operation, 0),
            goals.get(operation, 0),
            "ok" if calls.get(operation, 0) == goal else "OFF",
        ]
        for operation, goal in {**goals, **{name: 0 for name in calls if name not in goals}}.items()
    ]
    rows.append(["total", sum(calls.values()), sum(goals.values()), ""])
    print(table(["operation", "calls", "goal", ""], rows))
    print(f"  {required}/{LAUNCH_SIZE} instances ended HttpTokens=required; handler wall time on moto {elapsed:.2f} s")

    print("\n(3) Lambda layer (functions/requirements.txt, manylinux2014_aarch64)")
    python_version, files, unzipped, zipped = measure_layer()
    print(
        table(
            ["layer", "python", "files", "unzipped", "zipped"],
            [["dependencies", python_version, files, _mb(unzipped), _mb(zipped)]],
        )
    )
    print("  Lambda limit: 250 MB unzipped for the function and all its layers together")


if __name__ == "__main__":
    main()

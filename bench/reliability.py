"""`python -m bench.reliability [--runs N] [--rate R] [--seed S]`: the handlers under hostile input and under faults.

Under in-process moto: every hostile event of emulator/hostile.py given to its handler (none may raise, none may
change anything), then N gate sweeps and N launch bursts with `R` of every AWS send failing (emulator/chaos.py),
each failed invocation retried twice with the same event, as Lambda would. Prints the figures the README quotes.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

from emulator import ACCOUNT, REGION


def _environment() -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "POWERTOOLS_METRICS_NAMESPACE": "ImdsEnforcer",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }.items():
        os.environ[name] = value
    os.environ.pop("AWS_ENDPOINT_URL", None)


def _hostile(context: Any) -> dict[str, tuple[int, int]]:
    """Handler -> (events tried, events that raised or changed something)."""
    import boto3

    from emulator import hostile
    from imds_enforcer.handlers import launch_watch, rejection_watch, slack_notify, usage_gate

    ec2 = boto3.client("ec2")
    (instance_id,) = [
        item["InstanceId"]
        for item in ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro")[
            "Instances"
        ]
    ]

    def changed() -> bool:
        item = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return item.get("MetadataOptions", {}).get("HttpTokens") != "optional" or bool(item.get("Tags"))

    suites = {
        "launch watch": (
            launch_watch.handler,
            hostile.hand_written_launch_events(instance_id) + hostile.generated_launch_events(instance_id),
        ),
        "usage gate": (usage_gate.handler, hostile.hand_written_gate_events() + hostile.generated_gate_events()),
        "rejection watch": (rejection_watch.handler, hostile.hand_written_alarm_events()),
        "slack notifier": (slack_notify.handler, hostile.hostile_sns_events()),
    }
    os.environ["SLACK_WEBHOOK_SECRET"] = "imds-enforcer/slack-webhook"
    figures: dict[str, tuple[int, int]] = {}
    for name, (handler, events) in suites.items():
        bad = 0
        for event in events:
            try:
                result: Any = handler(event, context)
            except Exception:
                bad += 1
                continue
            # A schedule without an account is still a schedule: the gate sweeping then is no fault
            swept = name == "usage gate" and result.get("status") == "processed"
            if changed() and not swept:
                bad += 1
        figures[name] = (len(events), bad)
    os.environ.pop("SLACK_WEBHOOK_SECRET")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability")
    # moto's cost grows with the fleet the runs leave behind (every sweep reads it all): 10 each takes minutes.
    parser.add_argument("--runs", type=int, default=10, help="gate sweeps and launch bursts, each (default 10)")
    parser.add_argument("--rate", type=float, default=0.3, help="share of AWS sends that fail (default 0.3)")
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args(argv)

    _environment()
    from moto import mock_aws

    from emulator import chaos
    from emulator.moto_ext import teach_moto
    from imds_enforcer.aws import clients
    from imds_enforcer.handlers import launch_watch, usage_gate

    teach_moto()
    # The service logs at INFO (the switch lines and unpublished reports are measured from it): quiet on the console.
    import logging

    for handler in logging.getLogger("imds-enforcer").handlers:
        handler.setLevel(logging.CRITICAL)
    started = time.monotonic()
    with mock_aws():
        clients.reset_clients()
        context = chaos.Context()
        hostile = _hostile(context)
        chaos.prepare_account()
        clients.reset_clients()
        rng = random.Random(args.seed)
        gate = chaos.Figures()
        burst = chaos.Figures()
        for _ in range(args.runs):
            gate.add(chaos.gate_run(rng=rng, handler=usage_gate.handler, rate=args.rate))
            burst.add(chaos.launch_run(rng=rng, handler=launch_watch.handler, rate=args.rate))

    print(f"Reliability (seed {args.seed}, in-process moto, account {ACCOUNT}, {time.monotonic() - started:.0f} s)")
    print("\nHostile events (hand-written and generated; none may raise, none may change anything)")
    print(f"{'handler':<18}{'events tried':>14}{'raised or changed':>20}")
    for name, (tried, bad) in hostile.items():
        print(f"{name:<18}{tried:>14}{bad:>20}")
    print(f"\nFaults: {args.rate:.0%} of AWS sends, each failed invocation retried twice with the same event")
    rows = [
        ("runs", "runs"),
        ("handler invocations (retries included)", "invocations"),
        ("invocations that raised", "raised"),
        ("runs that ended in the dead-letter queue", "dead_letters"),
        ("AWS sends", "sends"),
        ("faults injected", "faults"),
        ("optional instances present", "present"),
        ("accounted for (in a report, published or logged in full)", "accounted"),
        ("  of which: unchanged in a run that went to the dead-letter queue", "accounted_by_dead_letter"),
        ("switches", "switches"),
        ("wrongful enforcements", "wrongful"),
        ("switches missing from every report and every log", "unreported"),
        ("switches only in the log after the run's retries (the gate reports them)", "unpublished"),
        ("switches left untagged", "untagged"),
        ("switches untagged and unrecorded (unwatched)", "untagged_unwatched"),
    ]
    print(f"{'figure':<76}{'gate':>8}{'launch':>8}")
    for label, name in rows:
        print(f"{label:<76}{getattr(gate, name):>8}{getattr(burst, name):>8}")


if __name__ == "__main__":
    main()

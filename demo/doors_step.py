"""Demo step (n): which process makes the IMDSv1 calls of the blocked instance, and the IMDS doors outside EC2
instances (one of each type), through the real gate handler, the Slack rendering and the CLI audit."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import boto3

from emulator import ACCOUNT, REGION

Expect = Callable[[bool, str], None]
Gate = Callable[[dict[str, Any], Any], object]
DOCUMENT = f"ImdsEnforcer-{REGION}-ImdsPacketAnalyzer"
BLOCKED_NAME = "old-wiki-legacy"  # the gate candidate that still calls IMDSv1 (step f)


def _settings_env(**values: str) -> None:
    import os

    from imds_enforcer.domain.settings import Settings

    for name in Settings.model_fields:
        os.environ.pop(name, None)
    os.environ.update(values)


def _instance_named(name: str) -> str:
    reservations = boto3.client("ec2").describe_instances(Filters=[{"Name": "tag:Name", "Values": [name]}])
    instance_id: str = reservations["Reservations"][0]["Instances"][0]["InstanceId"]
    return instance_id


def run_doors_and_callers(gate: Gate, inbox: Any, expect: Expect, endpoint_url: str) -> None:
    from demo import show
    from demo.context import DemoLambdaContext
    from emulator import doors as build
    from emulator import events
    from imds_enforcer.domain.analyzer_document import ANALYZER_COMMIT, document_content

    context = DemoLambdaContext(function_name="imds-enforcer-usage-gate", account=ACCOUNT, region=REGION)
    scheduled = events.scheduled_event("imds-enforcer-usage-gate", account=ACCOUNT, region=REGION)

    # -- the caller analysis ------------------------------------------------------------------------------------
    blocked = _instance_named(BLOCKED_NAME)
    build.create_analyzer_document(DOCUMENT, document_content())
    build.manage_with_ssm(blocked)
    build.record_analyzer_run(blocked)
    print(f"  the blocked instance {blocked} ({BLOCKED_NAME}) is managed by SSM (agent online, Amazon Linux 2023)")
    print(f"  the stack's command document {DOCUMENT}: ImdsPacketAnalyzer pinned to {ANALYZER_COMMIT[:12]}")
    print("  the emulator answers the analyzer command with a recorded run (emulator/recordings)")
    print("  CALLER_ANALYSIS=run CALLER_ANALYSIS_MAX_INSTANCES=5 CALLER_ANALYSIS_MINUTES=10 (flag mode)")
    analysis = {
        "ENFORCEMENT_MODE": "flag",
        "REPORT_TOPIC_ARN": inbox.topic_arn,
        "LOOKBACK_DAYS": "14",
        "CALLER_ANALYSIS": "run",
        "CALLER_ANALYSIS_DOCUMENT": DOCUMENT,
    }

    print("\n  --- gate run 1: the blocked instance is selected, tagged, and sent the analyzer ---")
    _settings_env(**analysis)
    gate(scheduled, context)
    first = _finding(inbox.drain(), blocked)
    print("  " + "\n  ".join(textwrap.wrap(first.get("reason", ""), 110)))
    tags = _tags(blocked)
    print(f"  its tags now: {', '.join(f'{k}={v}' for k, v in tags.items() if k.startswith('imdsv2-enforcer:'))}")
    expect(first.get("details", {}).get("caller_analysis") == "started", "(n) the blocked instance should be sent it")
    expect("imdsv2-enforcer:caller-analysis" in tags, "(n) the selection tag must be on the instance")

    print("\n  --- gate run 2 (the next schedule): the analyzer's result, attached to the blocked finding ---")
    gate(scheduled, context)
    received = inbox.drain()
    second = _finding(received, blocked)
    callers = second.get("callers") or []
    rows = [
        [
            caller["count"],
            caller["process"],
            _cut(caller["command_line"], 60),
            _cut(" <- ".join(caller["parent_chain"]), 60),
        ]
        for caller in callers
    ]
    print(show.table(["calls", "process", "command line (secrets masked)", "called by"], rows))
    expect(second.get("details", {}).get("caller_analysis") == "done", "(n) the second run should attach the result")
    expect(bool(callers) and callers[0]["process"] == "python3", "(n) the top caller should be the export script")
    expect("S3cr3t-Pa55" not in str(second), "(n) the password in the caller's argv must be masked")
    _show_slack(received, blocked)

    # -- the doors outside EC2 instances --------------------------------------------------------------------------
    doors = build.seed_doors()
    print("\n  one door of each kind, every one allowing IMDSv1:")
    print(
        show.table(
            ["type", "resource", "how"],
            [[t, i, doors.roles.get(i, "")] for t, ids in doors.by_type.items() for i in ids],
        )
    )

    print("\n  --- gate in flag mode: every door is reported, none changed ---")
    _settings_env(**{**analysis, "CALLER_ANALYSIS": "read"})
    gate(scheduled, context)
    flagged = _doors(inbox.drain(), doors.by_type)
    for resource_type, ids in doors.by_type.items():
        for resource_id in ids:
            expect(flagged.get(resource_id) == "flagged", f"(n) {resource_type} {resource_id} should be flagged")

    print("\n  --- gate in fix mode with FIX_SAGEMAKER_NOTEBOOKS=true and FIX_LIGHTSAIL_INSTANCES=true ---")
    _settings_env(
        **{
            **analysis,
            "CALLER_ANALYSIS": "read",
            "ENFORCEMENT_MODE": "fix",
            "FIX_SAGEMAKER_NOTEBOOKS": "true",
            "FIX_LIGHTSAIL_INSTANCES": "true",
        }
    )
    gate(scheduled, context)
    fixed = _doors(inbox.drain(), doors.by_type)
    sagemaker = boto3.client("sagemaker")
    versions = {
        name: sagemaker.describe_notebook_instance(NotebookInstanceName=name)["InstanceMetadataServiceConfiguration"][
            "MinimumInstanceMetadataServiceVersion"
        ]
        for name in (doors.notebook_running, doors.notebook_stopped)
    }
    tokens = boto3.client("lightsail").get_instance(instanceName=doors.lightsail)["instance"]["metadataOptions"][
        "httpTokens"
    ]
    print(f"\n  read back: notebooks {versions}; Lightsail {doors.lightsail} httpTokens={tokens}")
    show.note(
        "The stopped notebook and the Lightsail instance now require IMDSv2; the running notebook waits for a run"
        " that finds it stopped (SageMaker refuses the change while it runs). Beanstalk, Batch, EKS, ECS and EMR"
        " are only ever flagged: each finding names the template or setting to change."
    )
    expect(
        fixed.get(doors.notebook_stopped) == "enforced" and versions[doors.notebook_stopped] == "2",
        "(n) the stopped notebook should require IMDSv2",
    )
    expect(
        fixed.get(doors.notebook_running) == "flagged" and versions[doors.notebook_running] == "1",
        "(n) the running notebook must be left",
    )
    expect(
        fixed.get(doors.lightsail) == "enforced" and tokens == "required",
        "(n) the Lightsail instance should require IMDSv2",
    )
    for resource_id in (doors.beanstalk, doors.batch, doors.eks, doors.ecs, doors.emr):
        expect(fixed.get(resource_id) == "flagged", f"(n) {resource_id} is only ever flagged")

    print("\n  --- imds-enforcer audit: the doors and the callers on the transition path ---")
    _audit(endpoint_url, expect)


def _finding(received: list[Any], resource_id: str) -> dict[str, Any]:
    for message in received:
        for finding in message.findings:
            if finding["resource_id"] == resource_id:
                return dict(finding)
    return {}


def _doors(received: list[Any], by_type: Mapping[str, list[str]]) -> dict[str, str]:
    from demo import show

    wanted = {resource_id for ids in by_type.values() for resource_id in ids}
    rows = []
    actions: dict[str, str] = {}
    for message in received:
        for finding in message.findings:
            if finding["resource_id"] in wanted:
                actions[finding["resource_id"]] = finding["action"]
                rows.append(
                    [
                        finding["resource_type"],
                        finding["resource_id"],
                        finding["action"],
                        "\n".join(textwrap.wrap(finding["reason"], 70)),
                    ]
                )
    print(show.table(["type", "resource", "action", "reason"], rows))
    return actions


def _tags(instance_id: str) -> dict[str, str]:
    item = boto3.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_slack(received: list[Any], blocked: str) -> None:
    """What Slack shows for the blocked instance (the notifier's own rendering of this report)."""
    from demo.slack_view import render_post
    from imds_enforcer.domain.report import Report
    from imds_enforcer.domain.slack_message import render_payload

    for message in received:
        report = Report.model_validate(message.report)
        if any(finding.resource_id == blocked for finding in report.findings):
            blocked_only = report.model_copy(
                update={"findings": [f for f in report.findings if f.resource_id == blocked]}
            )
            print("\n  what Slack shows for it:")
            print(render_post(render_payload(blocked_only).as_dict()))
            return


def _audit(endpoint_url: str, expect: Expect) -> None:
    """`imds-enforcer audit`'s own code (read only: it reads the analysis, sends nothing, fixes no door)."""
    from demo import show
    from imds_enforcer_cli.audit import run_audit

    _settings_env()
    result = run_audit(regions=[REGION], endpoint_url=endpoint_url)
    [region] = result.regions
    steps = region.steps()
    rows = [[step.name, step.status, "\n".join(textwrap.wrap(step.detail, 70))] for step in steps]
    print(show.table(["transition step", "status", "detail"], rows))
    names = {step.name: step for step in steps}
    for name in DOOR_STEPS:
        expect(name in names, f"(n) the audit should have a line for {name}")
    callers = names.get("IMDSv1 callers (ImdsPacketAnalyzer)")
    expect(callers is not None and "top callers: python3" in callers.detail, "(n) the audit should name the top caller")


DOOR_STEPS = (
    "SageMaker notebook instances",
    "Lightsail instances",
    "Elastic Beanstalk environments",
    "Batch compute environments",
    "EKS managed node groups",
    "ECS capacity providers",
    "EMR clusters",
)

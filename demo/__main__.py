"""`python -m demo`: the real handlers against a local AWS emulator, step by step, with the reports they publish.

Exits 0 when every step did what it should, 1 when one did not (each miss is printed as `CHECK FAILED`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

from emulator import ACCOUNT, REGION

if TYPE_CHECKING:
    from demo.aws import SourceRow
    from demo.slack_view import Transcript
    from emulator.fleet import LaunchSources
    from emulator.observe import Inbox

FOREIGN_ACCOUNT = "999988887777"
EXEMPT_TAG_KEY = "imdsv2-exempt"
ENFORCED_BY_TAG = "imdsv2-enforcer:enforced-by"
GATE_MODULE = "imds_enforcer.handlers.usage_gate"
SLACK_SECRET_NAME = "imds-enforcer/slack-webhook"


@dataclass
class Checks:
    """Outcome assertions that keep the demo going after a miss, so one run shows every problem."""

    failures: list[str] = field(default_factory=list)

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)
            print(f"  CHECK FAILED: {message}")


def _quiet_observability() -> None:
    # Read by Powertools when imds_enforcer.observability is first imported, so set before any handler import:
    # the JSON logs and the EMF metrics lines would bury the demo's own output.
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ImdsEnforcer")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "imds-enforcer")


def _settings_env(**values: str) -> None:
    """The demo decides every product setting: leftovers from the caller's shell must not change the story."""
    from imds_enforcer.domain.settings import Settings

    for name in Settings.model_fields:
        os.environ.pop(name, None)
    os.environ.update(values)


def main() -> int:
    from demo.slack_view import Transcript

    # Everything the demo (and the handlers' loggers) print is kept, so the Slack step can prove the webhook URL,
    # a credential, never reached the screen. Installed before any handler import: Powertools keeps the stdout
    # it sees at import time.
    real_stdout, real_stderr = sys.stdout, sys.stderr
    transcript = Transcript(real_stdout)
    sys.stdout = cast(TextIO, transcript)
    sys.stderr = cast(TextIO, transcript.sibling(real_stderr))
    try:
        return _main(transcript)
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr


def _main(transcript: Transcript) -> int:
    _quiet_observability()
    from emulator.server import start_server, use_endpoint

    started = time.monotonic()
    checks = Checks()
    print("IMDSv2 Enforcer: local demo (moto server on 127.0.0.1, real handlers, no AWS account)")
    try:
        with start_server() as local:
            print(f"  emulator: {local.endpoint_url}  account {local.account}  region {local.region}")
            use_endpoint(local.endpoint_url, region=REGION)
            _run(checks, transcript, endpoint_url=local.endpoint_url)
    except Exception as error:  # the demo's verdict must name what broke, then fail
        print(f"\nDEMO ERROR: {type(error).__name__}: {error}")
        raise
    elapsed = time.monotonic() - started
    print()
    if checks.failures:
        print(f"DEMO FAILED: {len(checks.failures)} check(s) failed in {elapsed:.1f} s:")
        for failure in checks.failures:
            print(f"  - {failure}")
        return 1
    print(f"DEMO OK: every step did what it should ({elapsed:.1f} s)")
    return 0


def _run(checks: Checks, transcript: Transcript, *, endpoint_url: str) -> None:
    import boto3

    from demo import show
    from demo.aws import actions_by_resource, snapshot
    from demo.context import DemoLambdaContext
    from emulator import events
    from emulator.fleet import create_ledger_table, put_rejections, seed_fleet, seed_new_launches
    from emulator.observe import CallCounter, Inbox
    from imds_enforcer.aws import clients
    from imds_enforcer.handlers import launch_watch

    show.heading("Seeding the emulator")
    fleet = seed_fleet(backdate_days=60)
    fresh = seed_new_launches()
    ledger = create_ledger_table("imds-enforcer-state")
    inbox = Inbox.create()
    print(
        f"  {len(fleet.all)} established instances (one per reservation, first launched 60 days ago), with 14 days of"
        " AWS/EC2 MetadataNoToken and CPUUtilization each"
    )
    print(f"  {len(fresh.all)} instances launched just now (no history yet)")
    print(f"  the stack's ledger table {ledger} (what was last reported about each instance)")
    print(f"  report topic {inbox.topic_arn}, with an SQS queue subscribed")
    before = snapshot(fleet.all)
    show.fleet("fleet before", before, fleet.roles, exempt_tag_key=EXEMPT_TAG_KEY)
    fresh_before = snapshot(fresh.all)
    show.fleet("new launches before", fresh_before, fresh.roles, exempt_tag_key=EXEMPT_TAG_KEY)

    names = {instance_id: row.name for instance_id, row in {**before, **fresh_before}.items()}

    # Count what the product sends, on its own (cached) clients: that is what idempotence means in AWS terms.
    counter = CallCounter().attach(clients.ec2(), clients.cloudwatch(), clients.dynamodb(), clients.sns())

    context = DemoLambdaContext(function_name="imds-enforcer-launch-watch", account=ACCOUNT, region=REGION)

    def invoke(event: dict[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
        """Call the handler as Lambda would; returns its summary and the AWS operations it sent."""
        counter.take()
        result: dict[str, Any] = launch_watch.handler(event, context)
        calls = counter.take()
        print(
            f"  handler returned: status={result['status']} findings={len(result['findings'])}"
            f" published={result['published']}"
        )
        if result.get("reason"):
            print(f"  reason: {result['reason']}")
        print("  AWS calls: " + (", ".join(f"{name} x{count}" for name, count in sorted(calls.items())) or "none"))
        return result, calls

    launch_event = events.run_instances_event(fresh.all, account=ACCOUNT, region=REGION)

    # (a) flag mode -------------------------------------------------------------------------------------------
    show.heading("(a) Launch watch, flag mode: a RunInstances event for three new instances")
    _settings_env(ENFORCEMENT_MODE="flag", REPORT_TOPIC_ARN=inbox.topic_arn)
    invoke(launch_event)
    received = inbox.drain()
    show.reports(received, names)
    actions = actions_by_resource(received)
    for instance_id in fresh.all:
        checks.expect(actions.get(instance_id) == "flagged", f"(a) {instance_id} should be flagged")
    checks.expect(snapshot(fresh.all) == fresh_before, "(a) flag mode must change nothing")

    # (b) fix mode --------------------------------------------------------------------------------------------
    show.heading("(b) Launch watch, fix mode: the same event (new instances have no history: enforced blind)")
    _settings_env(ENFORCEMENT_MODE="fix", REPORT_TOPIC_ARN=inbox.topic_arn)
    _, calls = invoke(launch_event)
    received = inbox.drain()
    show.reports(received, names)
    fresh_after = snapshot(fresh.all)
    show.fleet("new launches after", fresh_after, fresh.roles, exempt_tag_key=EXEMPT_TAG_KEY, before=fresh_before)
    actions = actions_by_resource(received)
    for instance_id in fresh.all:
        checks.expect(actions.get(instance_id) == "enforced", f"(b) {instance_id} should be enforced")
        checks.expect(fresh_after[instance_id].tokens == "required", f"(b) {instance_id} should end required")
        checks.expect(
            fresh_after[instance_id].tags.get(ENFORCED_BY_TAG) == "launch_watch", f"(b) {instance_id} enforced-by"
        )
    checks.expect(fresh_after[fresh.node].hop_limit == 2, "(b) the new EKS node should get hop limit 2")
    for instance_id in fresh.web:
        checks.expect(fresh_after[instance_id].hop_limit == 1, f"(b) web {instance_id} hop limit must stay 1")
    checks.expect(
        calls.get("ModifyInstanceMetadataOptions", 0) == len(fresh.all),
        f"(b) one modify per new instance ({len(fresh.all)}), got {calls.get('ModifyInstanceMetadataOptions')}",
    )

    # (c) the same event again --------------------------------------------------------------------------------
    show.heading("(c) Fix mode, the same event delivered again (EventBridge delivers at least once)")
    _, calls = invoke(launch_event)
    received = inbox.drain()
    show.reports(received, names)
    checks.expect(calls.get("ModifyInstanceMetadataOptions", 0) == 0, "(c) a repeat must modify nothing")
    checks.expect(calls.get("CreateTags", 0) == 0, "(c) a repeat must tag nothing")
    checks.expect(snapshot(fresh.all) == fresh_after, "(c) a repeat must change nothing")
    checks.expect(not received, "(c) a repeat reports nothing")

    # (d) a restart is not a launch -------------------------------------------------------------------------
    show.heading("(d) Monday 08:00, fix mode: the established fleet starts again (a running event for each)")
    started = [i for i in fleet.optional if i != fleet.stopped]
    show.note(
        "A start resets LaunchTime; the primary network interface keeps the first launch (60 days ago). So these are"
        " restarts, decided on each instance's own 14 days of evidence. The queue gathers the morning's running"
        " events into one batch: one DescribeInstances, one GetMetricData and one report for all of them."
    )
    _settings_env(ENFORCEMENT_MODE="fix", REPORT_TOPIC_ARN=inbox.topic_arn, LEDGER_TABLE_NAME=ledger)
    _, calls = invoke(
        events.queue_batch([events.state_change_event(i, account=ACCOUNT, region=REGION) for i in started])
    )
    checks.expect(
        (calls.get("DescribeInstances"), calls.get("GetMetricData")) == (1, 1),
        f"(d) the batch is read in one DescribeInstances and one GetMetricData, got {dict(calls)}",
    )
    received = inbox.drain()
    checks.expect(len(received) == 1, f"(d) the morning start is one report, got {len(received)}")
    show.reports(received, names)
    morning = snapshot(fleet.all)
    show.fleet("fleet after the morning start", morning, fleet.roles, exempt_tag_key=EXEMPT_TAG_KEY, before=before)
    actions = actions_by_resource(received)
    quiet = [*fleet.web, fleet.eks_host, fleet.ecs_host, fleet.endpoint_disabled]
    for instance_id in quiet:
        checks.expect(actions.get(instance_id) == "enforced", f"(d) quiet {instance_id} should be enforced on evidence")
        checks.expect(morning[instance_id].tokens == "required", f"(d) {instance_id} should end required")
    for host in (fleet.eks_host, fleet.ecs_host):
        checks.expect(morning[host].hop_limit == 1, f"(d) quiet container host {host} keeps hop limit 1")
    checks.expect(
        actions.get(fleet.imdsv1_user) == "blocked" and morning[fleet.imdsv1_user].tokens == "optional",
        f"(d) the known IMDSv1 user must be reported blocked and stay optional, got {actions.get(fleet.imdsv1_user)}",
    )
    checks.expect(actions.get(fleet.gappy) == "insufficient_data", "(d) the instance with metric gaps: insufficient")
    checks.expect(morning[fleet.gappy].tokens == "optional", "(d) the instance with metric gaps stays optional")
    checks.expect(actions.get(fleet.exempt) == "exempt", "(d) the exempt instance is reported exempt")
    checks.expect(morning[fleet.exempt] == before[fleet.exempt], "(d) the exempt instance must be untouched")

    # (e) the next morning -----------------------------------------------------------------------------------
    show.heading("(e) Tuesday 08:00: the same instances start again")
    for instance_id in (fleet.imdsv1_user, fleet.gappy, fleet.exempt):
        boto3.client("ec2").stop_instances(InstanceIds=[instance_id])
        boto3.client("ec2").start_instances(InstanceIds=[instance_id])
        invoke(events.state_change_event(instance_id, account=ACCOUNT, region=REGION))
    received = inbox.drain()
    show.reports(received, names)
    checks.expect(not received, "(e) unchanged verdicts are not posted again every morning")
    checks.expect(snapshot(fleet.all) == morning, "(e) nothing changes")
    show.note("Nothing is posted: the ledger says each verdict is the one reported yesterday.")

    # (f) a regression --------------------------------------------------------------------------------------
    show.heading("(f) Regression: an admin sets a web instance back to optional (no IMDSv1 call was rejected)")
    victim = fleet.web[0]
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=victim, HttpTokens="optional")
    print(f"  ModifyInstanceMetadataOptions {victim} HttpTokens=optional -> now {snapshot([victim])[victim].tokens}")
    invoke(events.modify_options_event(victim, "optional", caller_role="PlatformAdmin", account=ACCOUNT, region=REGION))
    received = inbox.drain()
    show.reports(received, names)
    checks.expect(actions_by_resource(received).get(victim) == "enforced", f"(f) {victim} should be enforced again")
    checks.expect(snapshot([victim])[victim].tokens == "required", f"(f) {victim} should end required")

    # (g) a set-back after rejections -----------------------------------------------------------------------
    show.heading("(g) On call: IMDSv1 calls of a web instance were rejected, the engineer sets it back to optional")
    broken = fleet.web[1]
    put_rejections(broken, 23.0)
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=broken, HttpTokens="optional")
    invoke(events.modify_options_event(broken, "optional", caller_role="OnCall", account=ACCOUNT, region=REGION))
    received = inbox.drain()
    show.reports(received, names)
    checks.expect(
        actions_by_resource(received).get(broken) == "flagged", f"(g) {broken} should be reported, not re-enforced"
    )
    checks.expect(snapshot([broken])[broken].tokens == "optional", f"(g) {broken} must stay optional")
    show.note("The person who restored the workload stands: the report names them, the count, and the way out.")

    # (h) a foreign event -----------------------------------------------------------------------------------
    show.heading(f"(h) A RunInstances event from another account ({FOREIGN_ACCOUNT})")
    result, _ = invoke(events.run_instances_event(fleet.web, account=FOREIGN_ACCOUNT, region=REGION))
    received = inbox.drain()
    show.reports(received, names)
    checks.expect(result["status"] == "ignored", "(h) a foreign event must be ignored")
    checks.expect(FOREIGN_ACCOUNT in str(result.get("reason")), "(h) the reason should name the foreign account")
    checks.expect(not received, "(h) a foreign event publishes nothing")

    # (i) the usage gate ------------------------------------------------------------------------------------
    show.heading("(i) Usage gate: scheduled sweep of instances first launched before the 14-day window")
    gate = _import_gate()
    if gate is None:
        print(f"  the usage gate is not built yet ({GATE_MODULE} is missing): skipped")
    else:
        names = _run_gate(gate, inbox, names, checks)  # now with the gate candidates' names

    # (j) launch sources -----------------------------------------------------------------------------------
    show.heading("(j) Where new instances come from: launch templates, a launch configuration, an own AMI")
    from emulator.fleet import seed_launch_sources

    sources = seed_launch_sources()
    sources_before = _sources_now(sources)
    print(
        f"  {len(sources.templates)} launch templates, 1 launch configuration, {len(sources.groups)} Auto Scaling"
        " groups (desired 0) and 1 AMI baked from a builder instance (terminated since)"
    )
    show.sources("launch sources", sources_before, sources.roles)

    # (k) the CLI's audit -----------------------------------------------------------------------------------
    show.heading("(k) imds-enforcer audit: the CLI's own code, in-process, read only")
    _run_audit(endpoint_url, fleet.all, fleet.exempt, sources, sources_before, checks)

    # (l) the gate fixes launch sources ---------------------------------------------------------------------
    show.heading("(l) Usage gate, fix mode with FIX_LAUNCH_TEMPLATES=true and FIX_IMAGES=true: the launch sources")
    if gate is None:
        print(f"  the usage gate is not built yet ({GATE_MODULE} is missing): skipped")
    else:
        _run_source_fixes(gate, inbox, names, sources, sources_before, checks)

    # (m) Slack ---------------------------------------------------------------------------------------------
    show.heading("(m) Slack notifier: every report from the topic, posted to a local Slack webhook")
    _run_slack(inbox, checks, transcript)

    # (n) the caller analysis and the IMDS doors outside EC2 instances -------------------------------------
    show.heading("(n) Which process calls IMDSv1, and the IMDS doors outside EC2 instances")
    if gate is None:
        print(f"  the usage gate is not built yet ({GATE_MODULE} is missing): skipped")
    else:
        from demo.doors_step import run_doors_and_callers

        run_doors_and_callers(gate, inbox, checks.expect, endpoint_url)

    show.heading("Fleet at the end")
    show.fleet("fleet now", snapshot(fleet.all), fleet.roles, exempt_tag_key=EXEMPT_TAG_KEY, before=before)


def _import_gate() -> Callable[[dict[str, Any], Any], object] | None:
    import importlib

    try:
        module = importlib.import_module(GATE_MODULE)
    except ModuleNotFoundError as error:
        if error.name != GATE_MODULE:
            raise  # the gate exists but one of its imports is broken: that is a failure, not "not built"
        return None
    handler: Callable[[dict[str, Any], Any], object] = module.handler
    return handler


def _run_gate(
    gate: Callable[[dict[str, Any], Any], object], inbox: Inbox, fleet_names: Mapping[str, str], checks: Checks
) -> dict[str, str]:
    """Returns the instance names known so far (the fleet's and the candidates'), for the later reports."""
    from demo import show
    from demo.aws import actions_by_resource, snapshot
    from demo.context import DemoLambdaContext
    from emulator import events
    from emulator.fleet import seed_gate_candidates

    candidates = seed_gate_candidates()
    print(
        f"  {len(candidates.all)} more optional instances, first launched 30 days ago, 14 days of metrics: quiet ones,"
        " a quiet EKS node, an EKS node whose pods call IMDSv1, one that runs on weekdays only (started this"
        " morning), one still calling IMDSv1, one with days of missing data, one exempt"
    )
    before = snapshot(candidates.all)
    names = {**fleet_names, **{instance_id: row.name for instance_id, row in before.items()}}
    show.fleet("gate candidates before", before, candidates.roles, exempt_tag_key=EXEMPT_TAG_KEY)
    should_enforce: Sequence[str] = (*candidates.quiet, candidates.container_host, candidates.weekday_only)

    for mode in ("flag", "fix"):
        print(f"\n  --- gate in {mode} mode ---")
        _settings_env(ENFORCEMENT_MODE=mode, REPORT_TOPIC_ARN=inbox.topic_arn, LOOKBACK_DAYS="14")
        context = DemoLambdaContext(function_name="imds-enforcer-usage-gate", account=ACCOUNT, region=REGION)
        result = gate(events.scheduled_event("imds-enforcer-usage-gate", account=ACCOUNT, region=REGION), context)
        print(f"  handler returned: {_brief(result)}")
        received = inbox.drain()
        show.reports(received, names)
        actions = actions_by_resource(received)
        now = snapshot(candidates.all)
        expected_ready = "ready" if mode == "flag" else "enforced"
        for instance_id in should_enforce:
            checks.expect(
                actions.get(instance_id) == expected_ready,
                f"(i/{mode}) quiet {instance_id} should be {expected_ready}, got {actions.get(instance_id)}",
            )
        checks.expect(
            actions.get(candidates.imdsv1_user) == "blocked",
            f"(i/{mode}) the IMDSv1 caller should be blocked, got {actions.get(candidates.imdsv1_user)}",
        )
        checks.expect(
            actions.get(candidates.gappy) == "insufficient_data",
            f"(i/{mode}) the instance with gaps should be insufficient_data, got {actions.get(candidates.gappy)}",
        )
        for instance_id in (candidates.imdsv1_user, candidates.gappy, candidates.exempt, candidates.noisy_node):
            checks.expect(now[instance_id].tokens == "optional", f"(i/{mode}) {instance_id} must stay optional")
        expected_noisy = "blocked" if mode == "flag" else "prepared"
        checks.expect(
            actions.get(candidates.noisy_node) == expected_noisy,
            f"(i/{mode}) the EKS node calling IMDSv1: {expected_noisy}, got {actions.get(candidates.noisy_node)}",
        )
        if mode == "flag":
            checks.expect(now == before, "(i/flag) flag mode must change nothing")
        else:
            for instance_id in should_enforce:
                checks.expect(now[instance_id].tokens == "required", f"(i/fix) {instance_id} should end required")
                checks.expect(
                    now[instance_id].tags.get(ENFORCED_BY_TAG) == "usage_gate",
                    f"(i/fix) {instance_id} should carry enforced-by=usage_gate",
                )
            checks.expect(now[candidates.container_host].hop_limit == 1, "(i/fix) the quiet EKS node keeps hop limit 1")
            checks.expect(
                now[candidates.noisy_node].hop_limit == 2, "(i/fix) the EKS node calling IMDSv1 gets hop limit 2"
            )
            show.fleet("gate candidates after", now, candidates.roles, exempt_tag_key=EXEMPT_TAG_KEY, before=before)
    return names


def _sources_now(sources: LaunchSources) -> dict[str, SourceRow]:
    from demo.aws import sources_snapshot

    return sources_snapshot(
        templates=sources.templates,
        launch_configurations=[sources.launch_configuration],
        images=[sources.image],
    )


def _run_audit(
    endpoint_url: str,
    instance_ids: Sequence[str],
    exempt: str,
    sources: LaunchSources,
    sources_before: Mapping[str, SourceRow],
    checks: Checks,
) -> None:
    """`imds-enforcer audit --region us-east-1` without the subprocess: the same `run_audit` and `render_table`."""
    from rich.console import Console

    from demo.aws import snapshot
    from imds_enforcer_cli.audit import run_audit
    from imds_enforcer_cli.render import render_table

    _settings_env()  # the audit takes its settings from the environment (and switches every change off itself)
    print(f"  run_audit(regions=['us-east-1'], endpoint_url={endpoint_url!r}), then render_table: as the CLI prints")
    print()
    instances_before = snapshot(instance_ids)
    result = run_audit(regions=[REGION], endpoint_url=endpoint_url)
    console = Console(file=sys.stdout, width=118, color_system=None, no_color=True, highlight=False, emoji=False)
    render_table(result, console)

    [region] = result.regions
    found = {(finding.resource_type, finding.resource_id): finding.action.value for finding in region.report.findings}
    kinds = {resource_type for resource_type, _ in found}
    for kind in ("instance", "launch_template", "launch_configuration", "image", "account"):
        checks.expect(kind in kinds, f"(k) the audit should report a {kind} finding, reported {sorted(kinds)}")
    for key, expected in (
        (("instance", exempt), "exempt"),
        (("launch_template", sources.open_template), "flagged"),
        (("launch_template", sources.eks_template), "flagged"),
        (("launch_configuration", sources.launch_configuration), "flagged"),
        (("image", sources.image), "flagged"),
        (("account", ACCOUNT), "flagged"),
    ):
        checks.expect(found.get(key) == expected, f"(k) {key[0]} {key[1]} should be {expected}, got {found.get(key)}")
    checks.expect(
        ("launch_template", sources.required_template) not in found, "(k) the required template has nothing to report"
    )
    steps = {step.name: step.status for step in region.steps()}
    for name in ("launch templates", "launch configurations", "AMIs (ImdsSupport)", "account default"):
        checks.expect(
            steps.get(name) == "action", f"(k) transition step {name!r} should be to do, is {steps.get(name)}"
        )
    checks.expect(
        result.guardrail_hint.readiness.value == "not_ready", "(k) the account is not ready for guardrails yet"
    )
    checks.expect(snapshot(instance_ids) == instances_before, "(k) the audit must change no instance")
    checks.expect(_sources_now(sources) == sources_before, "(k) the audit must change no launch source")


def _run_source_fixes(
    gate: Callable[[dict[str, Any], Any], object],
    inbox: Inbox,
    names: Mapping[str, str],
    sources: LaunchSources,
    before: Mapping[str, SourceRow],
    checks: Checks,
) -> None:
    from demo import show
    from demo.aws import actions_by_resource
    from demo.context import DemoLambdaContext
    from emulator import events

    _settings_env(
        ENFORCEMENT_MODE="fix",
        REPORT_TOPIC_ARN=inbox.topic_arn,
        LOOKBACK_DAYS="14",
        FIX_LAUNCH_TEMPLATES="true",
        FIX_IMAGES="true",
    )
    print(
        "  ENFORCEMENT_MODE=fix FIX_LAUNCH_TEMPLATES=true FIX_IMAGES=true (both opt-in: an AMI's ImdsSupport is final)"
    )
    context = DemoLambdaContext(function_name="imds-enforcer-usage-gate", account=ACCOUNT, region=REGION)
    result = gate(events.scheduled_event("imds-enforcer-usage-gate", account=ACCOUNT, region=REGION), context)
    print(f"  handler returned: {_brief(result)}")
    received = inbox.drain()
    source_names = {resource_id: row.name for resource_id, row in before.items() if row.name != resource_id}
    show.reports(received, {**names, **source_names})
    after = _sources_now(sources)
    show.sources("launch sources before", before, sources.roles)
    show.sources("launch sources after", after, sources.roles, before=before)
    print()
    show.note(
        "The storefront template has a new default version that requires IMDSv2 (its group launches $Default, so"
        " it follows), and the AMI now says ImdsSupport v2.0. The EKS template is EKS's to change (a version added"
        " here would be lost or fight the node group), and a launch configuration cannot change: both stay flagged."
    )

    actions = actions_by_resource(received)
    for resource_id, expected in (
        (sources.open_template, "enforced"),
        (sources.image, "enforced"),
        (sources.eks_template, "flagged"),
        (sources.launch_configuration, "flagged"),
    ):
        checks.expect(
            actions.get(resource_id) == expected,
            f"(l) {resource_id} should be {expected}, got {actions.get(resource_id)}",
        )
    checks.expect(sources.required_template not in actions, "(l) the required template has nothing to report")
    fixed = after[sources.open_template]
    checks.expect(
        fixed.default_version == "2 of 2" and fixed.setting == "HttpTokens required",
        f"(l) the template should have a new default version 2 requiring IMDSv2, is {fixed.default_version}"
        f" / {fixed.setting}",
    )
    checks.expect(fixed.used_by == before[sources.open_template].used_by, "(l) its group must still launch $Default")
    checks.expect(
        after[sources.image].setting == "ImdsSupport v2.0", f"(l) the AMI should end v2.0: {after[sources.image]}"
    )
    for unchanged in (sources.eks_template, sources.required_template, sources.launch_configuration):
        checks.expect(after[unchanged] == before[unchanged], f"(l) {unchanged} must be left unchanged")


def _run_slack(inbox: Inbox, checks: Checks, transcript: Transcript) -> None:
    """Each report the topic delivered goes, as an SNS-to-Lambda event, through the real Slack handler, whose
    webhook URL is read from the emulator's Secrets Manager; a real HTTP server on 127.0.0.1 plays Slack."""
    import boto3

    from demo import show
    from demo.context import DemoLambdaContext
    from demo.slack_view import header_text, render_post, sns_event
    from emulator.webhook import start_webhook
    from imds_enforcer.domain.slack_message import MAX_BLOCKS
    from imds_enforcer.handlers import slack_notify

    delivered = list(inbox.history)
    context = DemoLambdaContext(function_name="imds-enforcer-slack-notify", account=ACCOUNT, region=REGION)
    with start_webhook() as webhook:
        try:
            boto3.client("secretsmanager").create_secret(Name=SLACK_SECRET_NAME, SecretString=webhook.url)
            _settings_env(SLACK_WEBHOOK_SECRET=SLACK_SECRET_NAME)
            print("  a local HTTP server on 127.0.0.1 plays Slack's incoming webhook")
            print(f"  its URL is stored in Secrets Manager as {SLACK_SECRET_NAME} (a credential: never printed)")
            print(
                f"  SLACK_WEBHOOK_SECRET={SLACK_SECRET_NAME}; {len(delivered)} report(s) to deliver, one SNS event each"
            )
            for number, message in enumerate(delivered, start=1):
                try:
                    result = slack_notify.handler(sns_event(message), context)
                except Exception as error:  # a failed post must show as a failed check, not end the demo
                    checks.expect(False, f"(j) report {number} not posted: {type(error).__name__}: {error}")
                    continue
                checks.expect(result == {"posted": 1, "skipped": 0}, f"(j) report {number}: handler returned {result}")
            posts = webhook.received()
            secret_path = webhook.path
        finally:
            # Not left in the environment for anything that runs after this step.
            os.environ.pop("SLACK_WEBHOOK_SECRET", None)

    rows = [
        [
            number,
            message.attributes.get("trigger"),
            message.attributes.get("mode"),
            len(post["blocks"]),
            header_text(post),
        ]
        for number, (message, post) in enumerate(zip(delivered, posts, strict=False), start=1)
    ]
    print(f"\n  posts Slack received: {len(posts)}")
    print(show.table(["#", "trigger", "mode", "blocks", "header"], rows))

    launch_fix, gate_fix = (
        [number for number, row in enumerate(rows, start=1) if row[1:3] == [trigger, "fix"]]
        for trigger in ("launch", "gate")
    )
    # The first launch and gate reports in fix mode, and the last gate one (the launch sources), when different.
    shown = dict.fromkeys([*launch_fix[:1], *gate_fix[:1], *gate_fix[-1:]])
    for chosen in shown:
        if chosen is not None and chosen <= len(posts):
            print(f"\n  what Slack shows for post #{chosen}:")
            print(render_post(posts[chosen - 1]))

    checks.expect(
        len(posts) == len(delivered), f"(j) Slack should get one post per report ({len(delivered)}), got {len(posts)}"
    )
    for number, (message, post) in enumerate(zip(delivered, posts, strict=False), start=1):
        checks.expect(len(post["blocks"]) <= MAX_BLOCKS, f"(j) post {number} has {len(post['blocks'])} blocks")
        checks.expect(post.get("text") == message.subject, f"(j) post {number}'s text should be the SNS subject")
    printed = transcript.text()
    token = secret_path.rsplit("/", 1)[-1]  # the part of the URL that makes it a credential
    checks.expect(token not in printed, "(j) the webhook URL (or its token) must never be printed")


def _brief(result: object) -> str:
    if isinstance(result, Mapping):
        return " ".join(
            f"{key}={value}" for key, value in result.items() if value not in ("", None) and not isinstance(value, list)
        )
    return repr(result)


if __name__ == "__main__":
    sys.exit(main())

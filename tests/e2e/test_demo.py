"""The demo path end to end, and proof that the handler's changes live in the emulator (not in this process):
a second Python process, with only AWS_ENDPOINT_URL in common, reads them back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from emulator.server import start_server
from imds_enforcer.aws import clients
from tests.conftest import ROOT
from tests.support.aws import launch, run_instances_event
from tests.support.context import FakeLambdaContext

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_SECONDS = 300  # ~45 s on a quiet 2-core machine; generous for a loaded CI runner


def test_demo_runs_every_step_and_exits_zero():
    # Given a clean environment (no endpoint, no settings: the demo must set up everything itself)
    env = {key: value for key, value in os.environ.items() if key != "AWS_ENDPOINT_URL"}

    # When the README's main command runs as its own process
    result = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )

    # Then every step happened and was checked
    output = result.stdout
    assert result.returncode == 0, f"demo failed:\n{output[-4000:]}\n{result.stderr[-4000:]}"
    assert "DEMO OK" in output
    assert "CHECK FAILED" not in output
    for line in (
        "(a) Launch watch, flag mode",
        "(b) Launch watch, fix mode",
        "(c) Fix mode, the same event delivered again",
        "(d) Monday 08:00, fix mode: the established fleet starts again",
        "(e) Tuesday 08:00: the same instances start again",
        "(f) Regression",
        "(g) On call: IMDSv1 calls of a web instance were rejected",
        "(h) A RunInstances event from another account",
        "(i) Usage gate",
        "(j) Where new instances come from",
        "(k) imds-enforcer audit",
        "(l) Usage gate, fix mode with FIX_LAUNCH_TEMPLATES=true and FIX_IMAGES=true",
        "(m) Slack notifier",
        "(n) Which process calls IMDSv1, and the IMDS doors outside EC2 instances",
        "restarted (first launched",
        "not re-enforced",
        "status=ignored",
        "reason: event from account 999988887777; this deployment serves 123456789012",
        "regression to optional undone",
        "attributes: action=flagged severity=warning trigger=launch mode=flag",
        "attributes: action=enforced severity=info trigger=launch mode=fix",
    ):
        assert line in output, f"missing from the demo's output: {line!r}"
    # The usage gate ran in both modes, or the demo said plainly that it is not built yet
    assert "the usage gate is not built yet" in output or (
        "trigger=gate mode=flag" in output and "trigger=gate mode=fix" in output
    )
    # The CLI's audit, rendered by its own table code: every kind of resource, the transition path, the summary
    audit = output[output.index("(k) imds-enforcer audit") : output.index("(l) Usage gate, fix mode")]
    assert "\x1b[" not in audit, "the audit table must be printed without colour"
    for line in (
        "us-east-1 (account 123456789012)",
        "transition path",
        "audit (read only) of account 123456789012 in us-east-1; look-back 14 days",
        "guardrails: not ready for guardrails",
    ):
        assert line in audit, f"missing from the audit: {line!r}"
    for step in (
        r"instances: require IMDSv2\W+to do\W+\d+ required, \d+ optional",
        r"launch templates\W+to do\W+2 launch templates still allow IMDSv1",
        r"launch configurations\W+to do\W+1 launch configuration still allows IMDSv1",
        r"AMIs \(ImdsSupport\)\W+to do\W+1 image still allows IMDSv1",
        r"account default\W+to do\W+HttpTokens no-preference",
    ):
        assert re.search(step, audit), f"missing from the audit's transition path: {step!r}"
    for row in (
        r"i-\w+\W+instance\W+blocked\W+35\W",
        r"i-\w+\W+instance\W+exempt\W",
        r"lt-\w+\W+launch_template\W+flagged\W",
        r"legacy-batch-lc\W+launch_configuration\W+flagged\W",
        r"ami-\w+\W+image\W+flagged\W",
        r"123456789012\W+account\W+flagged\W",
    ):
        assert re.search(row, audit), f"missing from the audit's findings: {row!r}"
    # The gate with both opt-ins: a new default version for the template and ImdsSupport v2.0 for the AMI; the
    # EKS-managed template and the launch configuration stay as they were
    sources = output[output.index("(l) Usage gate, fix mode") : output.index("(m) Slack notifier")]
    after = sources[sources.index("launch sources after") :]
    assert re.search(r"\* launch template\s+lt-\w+\s+storefront-web\s.*\s2 of 2\s+HttpTokens required", after)
    assert re.search(r"\* AMI\s+ami-\w+\s.*\sImdsSupport v2\.0", after)
    assert re.search(r"\n    launch template\s+lt-\w+\s+eks-prod-workers\s.*\s1 of 1\s+HttpTokens optional", after)
    assert re.search(r"\n    launch configuration\s+legacy-batch-lc\s.*\sHttpTokens optional", after)
    assert "eks:nodegroup-name" in sources
    # Every report went through the real Slack notifier to the local webhook, and the demo shows what Slack shows
    slack = output[output.index("(m) Slack notifier") : output.index("Fleet at the end")]
    assert re.search(r"posts Slack received: \d+", slack)
    assert "what Slack shows for post #" in slack
    assert "IMDSv2 launch report · 123456789012 · us-east-1 · fix mode" in slack
    if "trigger=gate mode=fix" in output:
        assert "IMDSv2 gate report · 123456789012 · us-east-1 · fix mode" in slack
        assert re.search(r"enforced · lt-\w+ \(https://\S+#LaunchTemplateDetails:launchTemplateId=lt-\w+\)", slack)
    # mrkdwn links read as `label (url)`
    assert re.search(
        r"enforced · i-\w+ \(https://us-east-1\.console\.aws\.amazon\.com/ec2/home\?region=us-east-1#", slack
    )
    # The caller analysis and the doors: the blocked instance's callers (secrets masked), each door type reported,
    # the stopped notebook and the Lightsail instance fixed on opt-in, the audit's new lines
    doors = output[output.index("(n) Which process calls IMDSv1") : output.index("Fleet at the end")]
    assert "caller analysis started (SSM command" in doors
    assert re.search(r"24\s+python3\s+/usr/bin/python3 /opt/reporting/export\.py --db-password \*\*\*", doors)
    assert "S3cr3t-Pa55" not in output
    assert "IMDSv1 callers (ImdsPacketAnalyzer):" in doors  # what Slack shows
    for resource_type in (
        "sagemaker_notebook",
        "lightsail_instance",
        "elastic_beanstalk_environment",
        "batch_compute_environment",
        "eks_nodegroup",
        "ecs_capacity_provider",
        "emr_cluster",
    ):
        assert re.search(rf"{resource_type}\s+\S+\s+flagged", doors), resource_type
    assert re.search(r"lightsail_instance\s+marketing-blog\s+enforced", doors)
    assert re.search(r"sagemaker_notebook\s+finance-notebook\s+enforced", doors)
    assert re.search(r"IMDSv1 callers \(ImdsPacketAnalyzer\)\s+action\s+1 analysed; top callers: python3", doors)
    # The webhook URL is a credential: no part of its path is ever printed
    assert "/services/T0LOCAL00/" not in output
    assert "/services/T0LOCAL00/" not in result.stderr
    # The fleet table at the end: the quiet EKS node required on evidence keeping hop limit 1, the known IMDSv1 user
    # still optional after its restart, the exempt one untouched, api-01 never touched
    final = output[output.index("Fleet at the end") :]
    assert re.search(r"eks-node-a\s+eks-host\s+running\s+required\s+1\s+enabled\s+enforced-at=", final)
    assert re.search(r"legacy-reporting\s+imdsv1-user\s+running\s+optional\s+1\s+enabled\s+-\n", final)
    assert re.search(r"vendor-appliance\s+exempt\s+running\s+optional\s+1\s+enabled\s+imdsv2-exempt=", final)
    assert re.search(r"api-01\s+required\s+running\s+required\s+2\s+enabled\s+-\n", final)
    # The Powertools JSON logs are quieted: the output is the demo's own
    assert '"level":"INFO"' not in output


def test_fix_mode_change_is_visible_to_another_process(monkeypatch):
    with start_server() as local:
        # Given an optional EKS node in a moto server on 127.0.0.1
        monkeypatch.setenv("AWS_ENDPOINT_URL", local.endpoint_url)
        clients.reset_clients()
        [instance_id] = launch(tags={"Name": "eks-node", "eks:cluster-name": "prod"})
        monkeypatch.setenv("ENFORCEMENT_MODE", "fix")

        # When the launch watch handles its RunInstances event
        from imds_enforcer.handlers.launch_watch import handler

        summary = handler(run_instances_event([instance_id]), FakeLambdaContext())
        assert [finding["action"] for finding in summary["findings"]] == ["enforced"]

        # Then a second process, sharing nothing but the endpoint, sees the instance IMDSv2-only with hop limit 2
        code = (
            "import json, boto3; "
            f"item = boto3.client('ec2').describe_instances(InstanceIds=['{instance_id}'])"
            "['Reservations'][0]['Instances'][0]; "
            "print(json.dumps({'options': item['MetadataOptions'], "
            "'tags': {t['Key']: t['Value'] for t in item.get('Tags', [])}}))"
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_ENDPOINT_URL": local.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # No profile or config of the machine's user may redirect the second process.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["options"]["HttpTokens"] == "required"
        assert seen["options"]["HttpPutResponseHopLimit"] == 2
        assert seen["tags"]["imdsv2-enforcer:enforced-by"] == "launch_watch"


def test_installed_cli_audits_an_emulator_from_its_own_process(monkeypatch):
    # Given a moto server (this process) holding one optional and one required instance
    script = ROOT / ".venv" / "bin" / "imds-enforcer"
    if not script.exists():
        pytest.skip(f"the imds-enforcer console script is not installed at {script}: run `make setup`")
    with start_server() as local:
        # moto's state lives in this process, shared with earlier tests' servers: start from an empty account.
        urllib.request.urlopen(urllib.request.Request(f"{local.endpoint_url}/moto-api/reset", method="POST")).read()
        monkeypatch.setenv("AWS_ENDPOINT_URL", local.endpoint_url)
        clients.reset_clients()
        [optional] = launch()
        [required] = launch(tokens="required")

        # When the installed console script audits it, with nothing in common but the endpoint and the credentials
        env = {key: value for key, value in os.environ.items() if not key.startswith(("ENFORCEMENT_", "AWS_ENDPOINT"))}
        result = subprocess.run(
            [str(script), "audit", "--region", "us-east-1", "--endpoint-url", local.endpoint_url, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # Then it reports the optional instance (too new to prove anything) and leaves both as they were
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    findings = {finding["resource_id"]: finding["action"] for finding in report["findings"]}
    assert findings[optional] == "insufficient_data"
    assert required not in findings
    assert report["totals"]["instances_required"] == 1

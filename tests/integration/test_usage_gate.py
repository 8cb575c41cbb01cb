"""The usage gate end to end under moto: real handler, real boto3 calls, the report read back from the topic."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.retries.standard import ExponentialBackoff

from emulator.fleet import backdate_launch
from emulator.moto_ext import metadata_defaults_of
from imds_enforcer.aws import clients
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG
from imds_enforcer.handlers.usage_gate import handler
from tests.support.aws import SCHEDULED, ReportInbox, launch, metadata_options, tags_of
from tests.support.context import FakeLambdaContext, RunningOutContext
from tests.support.faults import count_calls, throttle_first
from tests.support.metrics import aged, put_daily, put_points

CLEAN = [0.0] * 14


pytestmark = pytest.mark.usefixtures("aws")


@pytest.fixture
def fix_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")


def ready_instance(**kwargs: Any) -> str:
    """An optional instance launched 30 days ago with zero IMDSv1 use on every day of the window."""
    (instance_id,) = launch(**kwargs)
    backdate_launch([instance_id], 30)
    put_daily(instance_id, CLEAN)
    return instance_id


def enforced_instance(*, days_ago: float, by: str = "usage_gate") -> tuple[str, datetime]:
    """An instance this service required IMDSv2 on `days_ago` days ago (tokens required, who/when tags)."""
    when = aged(days_ago).replace(microsecond=0)
    tags = {ENFORCED_AT_TAG: when.strftime("%Y-%m-%dT%H:%M:%SZ"), ENFORCED_BY_TAG: by}
    (instance_id,) = launch(tokens="required", tags=tags)
    backdate_launch([instance_id], 60)
    return instance_id, when


def only_report(inbox: ReportInbox) -> dict[str, Any]:
    received = inbox.drain()
    assert len(received) == 1, [message.subject for message in received]
    report: dict[str, Any] = received[0].report
    return report


def by_instance(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    findings: dict[str, dict[str, Any]] = {}
    for finding in report["findings"]:
        assert finding["resource_id"] not in findings, f"two findings for {finding['resource_id']}"
        findings[finding["resource_id"]] = finding
    return findings


# The sweep, flag mode and fix mode.


def test_flag_mode_reports_every_optional_instance_and_changes_nothing(
    inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    # Given one instance of each kind: ready, used IMDSv1, too little data, too new, exempt, and one already required
    ready = ready_instance()
    (used,) = launch()
    backdate_launch([used], 30)
    put_daily(used, [0.0, 0.0, 4.0, 0.0, 1.0, *CLEAN[5:]])
    (sparse,) = launch()
    backdate_launch([sparse], 30)
    put_daily(sparse, [0.0] * 9 + [None] * 5)
    (new,) = launch()
    put_daily(new, [0.0])
    (exempt,) = launch(tags={"imdsv2-exempt": "vendor appliance"})
    launch(tokens="required")

    # When the scheduled gate runs in flag mode (the default)
    summary = handler(SCHEDULED, lambda_context)

    # Then every optional instance has exactly one finding, with the evidence behind it
    report = only_report(inbox)
    findings = by_instance(report)
    assert {key: value["action"] for key, value in findings.items()} == {
        ready: "ready",
        used: "blocked",
        sparse: "insufficient_data",
        new: "insufficient_data",
        exempt: "exempt",
    }
    assert findings[used]["metadata_no_token"] == 5.0
    assert datetime.fromisoformat(findings[used]["last_imdsv1_call_at"]) > aged(3)
    assert "MetadataNoToken has data on 9 of the 14 days it ran (needs 13)" in findings[sparse]["reason"]
    assert "after the 14-day window began" in findings[new]["reason"]
    assert "vendor appliance" in findings[exempt]["reason"]
    assert report["trigger"] == "gate"
    assert report["mode"] == "flag"
    assert report["source_event_id"] == SCHEDULED["id"]
    assert report["totals"]["instances_scanned"] == 5
    assert report["totals"]["optional_remaining"] == 5
    assert report["totals"]["enforced"] == 0
    assert report["counts"] == {"blocked": 1, "insufficient_data": 2, "ready": 1, "exempt": 1}
    assert summary["status"] == "processed"
    assert summary["published"] == 1
    # And no instance was changed
    assert metadata_options(ready)["HttpTokens"] == "optional"
    assert ENFORCED_AT_TAG not in tags_of(ready)


def test_fix_mode_enforces_only_the_ready_ones(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None
) -> None:
    # Given a ready instance, a ready container host, and one that used IMDSv1 yesterday
    ready = ready_instance()
    node = ready_instance(tags={"eks:cluster-name": "prod"})
    (used,) = launch()
    backdate_launch([used], 30)
    put_daily(used, [2.0, *CLEAN[1:]])

    # When the gate runs (manual invoke)
    handler({}, lambda_context)

    # Then the ready ones require IMDSv2 and carry who/when tags; the quiet container host keeps hop limit 1
    # (nothing reached IMDS through the extra hop; raising it would hand its pods the node's credentials)
    assert metadata_options(ready)["HttpTokens"] == "required"
    assert metadata_options(ready)["HttpPutResponseHopLimit"] == 1
    assert metadata_options(node)["HttpTokens"] == "required"
    assert metadata_options(node)["HttpPutResponseHopLimit"] == 1
    assert tags_of(ready)[ENFORCED_BY_TAG] == "usage_gate"
    assert datetime.fromisoformat(tags_of(ready)[ENFORCED_AT_TAG]) > aged(0.01)
    # And the one that used IMDSv1 is left alone
    assert metadata_options(used)["HttpTokens"] == "optional"
    report = only_report(inbox)
    findings = by_instance(report)
    assert findings[ready]["action"] == "enforced"
    assert findings[node]["reason"].startswith("HttpTokens set to required (no IMDSv1 calls; it ran on 14 of 14 days")
    assert "hop limit" not in findings[node]["reason"]
    assert findings[used]["action"] == "blocked"
    assert report["totals"]["enforced"] == 2
    assert report["totals"]["optional_remaining"] == 1


def test_second_run_has_nothing_to_say(inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None) -> None:
    # Given a ready instance that the first run enforces
    ready_instance()
    handler({}, lambda_context)
    inbox.drain()
    # When the gate runs again
    summary = handler({}, lambda_context)
    # Then no optional instance is left and nothing is published
    assert summary["totals"]["instances_scanned"] == 0
    assert inbox.drain() == []


def test_foreign_event_changes_nothing(inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None) -> None:
    # Given a ready instance
    ready = ready_instance()
    # When the gate receives an EC2 state-change event, and a schedule of another account
    other_source = handler(
        {**SCHEDULED, "source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}, lambda_context
    )
    other_account = handler({**SCHEDULED, "account": "210987654321"}, lambda_context)
    # Then both are ignored with a reason, nothing is changed and nothing is published
    assert other_source["status"] == "ignored"
    assert "not an EventBridge schedule" in str(other_source["reason"])
    assert other_account["status"] == "ignored"
    assert "210987654321" in str(other_account["reason"])
    assert metadata_options(ready)["HttpTokens"] == "optional"
    assert inbox.drain() == []


def test_real_scheduled_event_sample_runs_the_sweep(
    inbox: ReportInbox, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the recorded scheduled event (account 101010101111, no version field) and a deployment in that account
    event = json.loads((samples_dir / "events" / "scheduled-event_epoch-time_no-version-field_c7n.json").read_text())
    context = FakeLambdaContext(account=event["account"], region="us-east-1")
    (instance_id,) = launch()
    # When the gate handles it
    summary = handler(event, context)
    # Then it runs the sweep and reports the instance
    assert summary["status"] == "processed"
    assert by_instance(only_report(inbox))[instance_id]["action"] == "insufficient_data"


# The watch after the switch.


def test_rejections_after_enforcement_are_reported(inbox: ReportInbox, lambda_context: FakeLambdaContext) -> None:
    # Given two instances enforced 3 days ago, one of which rejected IMDSv1 calls since, and one enforced long ago
    broken, when = enforced_instance(days_ago=3)
    quiet, _ = enforced_instance(days_ago=3)
    old, old_when = enforced_instance(days_ago=40)
    put_points(
        broken, [(when + timedelta(hours=5), 7.0), (when + timedelta(days=1), 5.0)], metric="MetadataNoTokenRejected"
    )
    put_points(quiet, [(when + timedelta(hours=5), 0.0)], metric="MetadataNoTokenRejected")
    put_points(old, [(old_when + timedelta(days=39), 3.0)], metric="MetadataNoTokenRejected")

    # When the gate runs without rollback (the default)
    handler(SCHEDULED, lambda_context)

    # Then the broken one is reported as rejected, high severity, with the count; nothing is rolled back
    report = only_report(inbox)
    findings = by_instance(report)
    assert set(findings) == {broken}
    assert findings[broken]["action"] == "rejected"
    assert findings[broken]["severity"] == "high"
    assert findings[broken]["metadata_no_token_rejected"] == 12.0
    assert metadata_options(broken)["HttpTokens"] == "required"
    assert report["totals"]["watched"] == 2  # the 40-day-old one is past WATCH_DAYS


def test_rollback_exempts_then_sets_optional(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance the launch watch enforced yesterday that rejected IMDSv1 calls since, rollback opted in
    monkeypatch.setenv("ROLLBACK_ON_REJECTED", "true")
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    broken, when = enforced_instance(days_ago=1, by="launch_watch")
    put_points(broken, [(when + timedelta(hours=2), 3.0)], metric="MetadataNoTokenRejected")

    # When the gate runs
    handler(SCHEDULED, lambda_context)

    # Then the instance accepts IMDSv1 again and carries the exemption tag with reason and date
    assert metadata_options(broken)["HttpTokens"] == "optional"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert tags_of(broken)["imdsv2-exempt"] == f"rolled back {today}: 3 IMDSv1 calls rejected"
    finding = by_instance(only_report(inbox))[broken]
    assert finding["action"] == "rolled_back"
    assert finding["metadata_no_token_rejected"] == 3.0

    # And the next run sees it exempt and does not roll it back again
    handler(SCHEDULED, lambda_context)
    again = by_instance(only_report(inbox))
    assert again[broken]["action"] == "exempt"


# Scale: batching, throttling, time budget.


def test_fleet_stays_at_the_call_floor(inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None) -> None:
    # Given 420 optional instances (20 ready, the rest without data) and 100 enforced ones under watch
    fleet = launch(count=400)
    ready = [ready_instance() for _ in range(20)]
    when = aged(2).replace(microsecond=0)
    watched = launch(tokens="required", count=100, tags={ENFORCED_AT_TAG: when.strftime("%Y-%m-%dT%H:%M:%SZ")})
    put_points(watched[0], [(when + timedelta(hours=3), 1.0)], metric="MetadataNoTokenRejected")
    log = count_calls(clients.ec2(), clients.ec2_paced(), clients.cloudwatch(), clients.sns())

    # When the gate runs once
    handler(SCHEDULED, lambda_context)

    # Then every metric went out in ceil((2 x 420 + 100) / 500) = 2 GetMetricData calls of at most 500 queries:
    # MetadataNoToken and the running reference for each optional instance, MetadataNoTokenRejected for each watched
    queries = 2 * (len(fleet) + len(ready)) + len(watched)
    assert log.metric_queries == [500, queries - 500]
    assert log.counts["GetMetricData"] == math.ceil(queries / 500)
    # And DescribeInstances was one page per listing plus one re-check of the ready ones just before their modifies
    # (one batch: up to 50), DescribeImages one call for the instances' AMIs (one AMI here) and one for the account's
    # own AMIs (the launch-source check), one modify per ready instance, one tag call, one publish
    assert log.counts["DescribeInstances"] == 2 + 1
    assert log.counts["DescribeImages"] == 2
    assert log.counts["ModifyInstanceMetadataOptions"] == len(ready)
    assert log.counts["CreateTags"] == 1
    assert log.counts["Publish"] == 1
    # And every optional instance is in the report, plus the rejection
    findings = by_instance(only_report(inbox))
    assert set(findings) == {*fleet, *ready, watched[0]}
    assert {findings[i]["action"] for i in ready} == {"enforced"}
    assert findings[watched[0]]["action"] == "rejected"


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real retries, without their sleeps (the backoff itself is botocore's business)."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


def test_throttling_slows_the_pacer_and_is_never_a_failure(
    inbox: ReportInbox,
    lambda_context: FakeLambdaContext,
    fix_mode: None,
    no_backoff: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 6 ready instances and EC2 throttling the first 8 ModifyInstanceMetadataOptions sends (a fast documented
    # rate, so the pacer's back-off takes milliseconds here)
    monkeypatch.setenv("MODIFY_RATE_PER_SECOND", "100")
    ready = [ready_instance() for _ in range(6)]
    throttled = throttle_first(clients.ec2_paced(), "ModifyInstanceMetadataOptions", 8)
    log = count_calls(clients.ec2_paced())

    # When the gate runs
    summary = handler(SCHEDULED, lambda_context)

    # Then the paced client retried each throttle once (2 sends), so 4 calls failed and the pacer, which counted all
    # 8 throttled answers, slowed down and tried those instances again later in the run: every instance is enforced,
    # none reported failed
    assert throttled.injected == 8
    assert log.counts["ModifyInstanceMetadataOptions"] == 6 + 4
    report = only_report(inbox)
    findings = by_instance(report)
    assert [findings[instance_id]["action"] for instance_id in ready] == ["enforced"] * 6
    assert [metadata_options(i)["HttpTokens"] for i in ready] == ["required"] * 6
    assert report["totals"]["throttles"] == 8
    assert report["totals"]["enforced"] == 6
    assert summary["totals"]["throttles"] == 8  # type: ignore[index]


def test_time_budget_defers_the_rest(inbox: ReportInbox, fix_mode: None) -> None:
    # Given 5 ready instances and a Lambda that runs below the 60 s margin after two modifies
    ready = [ready_instance() for _ in range(5)]

    # When the gate runs
    summary = handler(SCHEDULED, RunningOutContext(budget=2, then_ms=30_000))

    # Then two are enforced and three are left optional, reported ready and deferred
    report = only_report(inbox)
    findings = by_instance(report)
    assert [findings[i]["action"] for i in ready] == ["enforced", "enforced", "ready", "ready", "ready"]
    for instance_id in ready[2:]:
        assert findings[instance_id]["details"]["deferred"] == "true"
        assert "deferred to the next run: time budget" in findings[instance_id]["reason"]
        assert metadata_options(instance_id)["HttpTokens"] == "optional"
    assert report["totals"]["deferred"] == 3
    assert report["totals"]["optional_remaining"] == 3
    assert summary["totals"]["deferred"] == 3  # type: ignore[index]


# The account default.


def backend_defaults() -> dict[str, Any]:
    from moto.ec2.models import ec2_backends

    return metadata_defaults_of(ec2_backends["123456789012"]["us-east-1"])


def test_account_default_set_when_only_exempt_instances_remain(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a region with one ready instance and one exempt one, and the account default opted in
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    ready = ready_instance()
    launch(tags={"imdsv2-exempt": "legacy"})

    # When the gate runs
    handler(SCHEDULED, lambda_context)

    # Then the ready one is enforced and the account default requires IMDSv2 (launch enforcement left alone)
    assert metadata_options(ready)["HttpTokens"] == "required"
    assert boto3.client("ec2").get_instance_metadata_defaults()["AccountLevel"]["HttpTokens"] == "required"
    assert "HttpTokensEnforced" not in backend_defaults()
    account = by_instance(only_report(inbox))["123456789012"]
    assert account["resource_type"] == "account"
    assert account["action"] == "enforced"


def test_account_default_waits_while_instances_are_open(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance that still uses IMDSv1
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    log = count_calls(clients.ec2())
    (used,) = launch()
    backdate_launch([used], 30)
    put_daily(used, [1.0, *CLEAN[1:]])

    # When the gate runs
    handler(SCHEDULED, lambda_context)

    # Then the account default is not even read
    assert log.counts["GetInstanceMetadataDefaults"] == 0
    assert "123456789012" not in by_instance(only_report(inbox))


def test_account_default_already_required_does_nothing(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a clean region whose account default already requires IMDSv2
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    backend_defaults()["HttpTokens"] = "required"
    log = count_calls(clients.ec2())
    # When the gate runs
    handler(SCHEDULED, lambda_context)
    # Then it reads the default, changes nothing and has nothing to say
    assert log.counts["GetInstanceMetadataDefaults"] == 1
    assert log.counts["ModifyInstanceMetadataDefaults"] == 0
    assert inbox.drain() == []


def test_account_default_managed_by_declarative_policy_is_reported_not_fought(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a clean region whose IMDS defaults an organization's declarative policy manages (tokens optional)
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    backend_defaults().update(
        HttpTokens="optional", ManagedBy="declarative-policy", ManagedExceptionMessage="Ask the cloud team"
    )
    log = count_calls(clients.ec2())
    # When the gate runs
    handler(SCHEDULED, lambda_context)
    # Then it does not try to modify the default, and reports who manages it
    assert log.counts["ModifyInstanceMetadataDefaults"] == 0
    finding = by_instance(only_report(inbox))["123456789012"]
    assert finding["resource_type"] == "account"
    assert finding["action"] == "flagged"
    assert "declarative policy" in finding["reason"]
    assert "Ask the cloud team" in finding["reason"]
    assert backend_defaults()["HttpTokens"] == "optional"


def test_account_default_in_flag_mode_is_only_reported(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a clean region, the account default opted in, but flag mode
    monkeypatch.setenv("SET_ACCOUNT_DEFAULT", "true")
    log = count_calls(clients.ec2())
    # When the gate runs
    handler(SCHEDULED, lambda_context)
    # Then the default is read, not changed, and reported as ready
    assert log.counts["ModifyInstanceMetadataDefaults"] == 0
    finding = by_instance(only_report(inbox))["123456789012"]
    assert finding["action"] == "ready"
    assert "HttpTokens" not in backend_defaults()


# The central exemption list (SSM Parameter Store), replacing the tag.


def put_exemption_list(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    boto3.client("ssm").put_parameter(Name="/platform/imds-exemptions", Value=value, Type="String")
    monkeypatch.setenv("EXEMPTION_PARAMETER", "/platform/imds-exemptions")


def test_the_central_list_decides_who_is_exempt_and_reports_expired_entries(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a listed instance, a self-tagged one the list does not name, and an expired entry
    listed = ready_instance()
    self_tagged = ready_instance(tags={"imdsv2-exempt": "I said so"})
    lapsed = ready_instance()
    entries = [
        {"instance_id": listed, "reason": "vendor appliance (CHG-2291)", "expires": "2099-12-31"},
        {"instance_id": lapsed, "reason": "old migration", "expires": "2020-01-01"},
    ]
    put_exemption_list(monkeypatch, json.dumps({"version": 1, "exemptions": entries}))

    handler(SCHEDULED, lambda_context)

    findings = only_report(inbox)["findings"]
    actions = {(f["resource_type"], f["resource_id"]): f["action"] for f in findings}
    assert actions[("instance", listed)] == "exempt"
    # the tag is no privilege any more: the self-tagged instance is decided on its evidence
    assert actions[("instance", self_tagged)] == "enforced"
    assert actions[("instance", lapsed)] == "enforced"
    assert actions[("exemption", lapsed)] == "flagged"
    assert metadata_options(listed)["HttpTokens"] == "optional"


def test_an_invalid_central_list_changes_nothing_and_says_what_is_wrong(
    inbox: ReportInbox, lambda_context: FakeLambdaContext, fix_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imds_enforcer.domain.exemptions import ExemptionListError

    ready = ready_instance()
    put_exemption_list(monkeypatch, json.dumps({"exemptions": [{"instance_id": ready, "reason": "no expiry"}]}))

    with pytest.raises(ExemptionListError, match=r"/platform/imds-exemptions.*exemptions\.0\.expires"):
        handler(SCHEDULED, lambda_context)

    assert metadata_options(ready)["HttpTokens"] == "optional"
    assert inbox.drain() == []

"""The bad-input suite: every handler given hostile events (hand-written and generated) under moto, in fix mode,
with an instance that a real event could switch. None raises, none changes anything, none publishes a report for an
event it ignored. Plus a hypothesis fuzz over the event readers with a fixed budget (no AWS needed)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import ACCOUNT, REGION, hostile
from emulator.fleet import backdate_launch
from imds_enforcer.domain.events import (
    Ignored,
    read_alarm_event,
    read_batch,
    read_gate_event,
    read_launch_event,
)
from imds_enforcer.domain.slack_message import reports_from_sns_event
from imds_enforcer.handlers import launch_watch, rejection_watch, slack_notify, usage_gate
from tests.support.aws import ReportInbox, launch, metadata_options, tags_of
from tests.support.context import FakeLambdaContext
from tests.support.metrics import put_daily

pytestmark = pytest.mark.usefixtures("aws")


@pytest.fixture
def ready(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fix mode, and an instance a real launch event or sweep would switch at once."""
    monkeypatch.setenv("ENFORCEMENT_MODE", "fix")
    monkeypatch.setenv("ROLLBACK_ON_REJECTED", "true")
    (instance_id,) = launch()
    backdate_launch([instance_id], 30)
    put_daily(instance_id, [0.0] * 14)
    return instance_id


def unchanged(instance_id: str) -> bool:
    return metadata_options(instance_id)["HttpTokens"] == "optional" and not tags_of(instance_id)


def test_the_launch_watch_ignores_every_hostile_event(
    ready: str, inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    events = hostile.hand_written_launch_events(ready) + hostile.generated_launch_events(ready)
    assert len(hostile.hand_written_launch_events(ready)) >= 40
    for event in events:
        result = launch_watch.handler(event, lambda_context)  # never raises
        assert result["status"] in {"ignored", "processed"}
        assert unchanged(ready), event
    # nothing it ignored reached the topic, and nothing of ours changed
    assert all(f["resource_id"] != ready for m in inbox.drain() for f in m.findings)


def test_the_gate_ignores_every_hostile_trigger(
    ready: str, inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    events = hostile.hand_written_gate_events() + hostile.generated_gate_events()
    assert len(events) >= 40
    for event in events:
        result = usage_gate.handler(event, lambda_context)
        if result["status"] == "ignored":
            assert unchanged(ready), event
        else:
            # a schedule without an account field is still a schedule: it sweeps, by the rules
            assert event.get("account") in (None, ACCOUNT), event  # type: ignore[union-attr]
            break
    assert sum(1 for e in events if usage_gate.handler(e, lambda_context)["status"] == "ignored") >= 40


def test_the_rejection_watch_ignores_every_hostile_alarm(
    ready: str, inbox: ReportInbox, lambda_context: FakeLambdaContext
) -> None:
    events = hostile.hand_written_alarm_events()
    assert len(events) >= 40
    for event in events:
        result = rejection_watch.handler(event, lambda_context)
        assert result["status"] == "ignored", event
    assert unchanged(ready)
    assert inbox.drain() == []


def test_the_slack_notifier_skips_every_message_that_is_not_a_report(
    monkeypatch: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    # No secret exists: a single attempt to post would fail loudly
    monkeypatch.setenv("SLACK_WEBHOOK_SECRET", "imds-enforcer/slack-webhook")
    events = hostile.hostile_sns_events()
    assert len(events) >= 40
    for event in events:
        result = slack_notify.handler(event, lambda_context)
        assert result["posted"] == 0


# --- the fuzz: event readers never raise, whatever they are given ----------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
KEYS = st.sampled_from(
    ["id", "source", "account", "region", "time", "detail-type", "detail", "Records", "version", "resources"]
)
EVENTS = st.dictionaries(KEYS, JSON, max_size=10) | JSON
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(EVENTS)
def test_fuzz_the_launch_event_reader(event: Any) -> None:
    for candidate in read_batch(event).events:
        result = read_launch_event(candidate, account=ACCOUNT, region=REGION, service_role_path="/imds-enforcer/")
        assert isinstance(result, Ignored) or result.event_id


@FUZZ
@given(EVENTS, st.sampled_from(["aws.events", "aws.cloudwatch", "aws.ec2"]))
def test_fuzz_the_gate_and_alarm_readers(event: Any, source: str) -> None:
    if isinstance(event, dict):
        event = {**event, "source": source}
    read_gate_event(event, account=ACCOUNT)
    read_alarm_event(event, account=ACCOUNT, region=REGION)


@FUZZ
@given(st.dictionaries(st.just("Records"), st.lists(JSON | st.fixed_dictionaries({"EventSource": JSON, "Sns": JSON}))))
def test_fuzz_the_sns_event_reader(event: Any) -> None:
    for record in reports_from_sns_event(event):
        assert record.report is not None or record.alarm is not None or record.skip_reason

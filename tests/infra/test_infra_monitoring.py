"""The dashboard and the alarms: what an operator sees, and what wakes them."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Template

from imds_enforcer.domain.metric_names import (
    CONTINUATIONS,
    MODIFY_THROTTLES,
    NAMESPACE,
    OPTIONAL_REMAINING,
    SERVICE,
    action_metric,
)
from imds_enforcer.domain.report import Action

HANDLERS = (
    "imds_enforcer.handlers.launch_watch.handler",
    "imds_enforcer.handlers.usage_gate.handler",
    "imds_enforcer.handlers.rejection_watch.handler",
    "imds_enforcer.handlers.slack_notify.handler",
)
SEARCHES = {
    name: f"SEARCH('{{AWS/EC2,InstanceId}} MetricName=\\\"{name}\\\"', 'Sum', 3600)"
    for name in ("MetadataNoToken", "MetadataNoTokenRejected")
}


def _dashboard_body(template: Template) -> str:
    """The DashboardBody Fn::Join with its literal parts joined; tokens become ``<LogicalId>``, ``<LogicalId.Attr>``."""
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    separator, parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"]

    def render(part: Any) -> str:
        if isinstance(part, str):
            return part
        if "Ref" in part:
            return f"<{part['Ref']}>"
        return "<{}.{}>".format(*part["Fn::GetAtt"])

    return str(separator).join(render(part) for part in parts)


def _alarms(template: Template) -> list[dict[str, Any]]:
    return [alarm["Properties"] for alarm in template.find_resources("AWS::CloudWatch::Alarm").values()]


def _function_id(template: Template, handler: str) -> str:
    (logical_id,) = template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": handler}})
    return logical_id


# ---- dashboard -----------------------------------------------------------------------------------------------


def test_dashboard_shows_account_wide_imdsv1_usage_per_instance_and_summed(template: Template) -> None:
    body = _dashboard_body(template)

    for search in SEARCHES.values():
        assert f'"expression":"{search}"' in body
        assert f'"expression":"SUM({search})"' in body


def test_dashboard_shows_the_services_own_metrics_with_their_statistics(template: Template) -> None:
    body = _dashboard_body(template)

    for name, stat, period in (
        (OPTIONAL_REMAINING, "Maximum", 3600),
        (action_metric(Action.ENFORCED), "Sum", 86400),
        (action_metric(Action.REJECTED), "Sum", 3600),
        (action_metric(Action.FAILED), "Sum", 3600),
        # the gate's pacing and continuations: throttles it slowed down for, runs that carried a sweep on
        (MODIFY_THROTTLES, "Sum", 3600),
        (CONTINUATIONS, "Sum", 3600),
    ):
        start = body.index(f'"{NAMESPACE}","{name}","service","{SERVICE}",{{')
        options = body[start : body.index("}", start)]
        assert f'"period":{period}' in options
        assert f'"stat":"{stat}"' in options


def test_dashboard_shows_errors_duration_and_dead_letters_of_every_function(template: Template) -> None:
    body = _dashboard_body(template)
    queues = template.find_resources("AWS::SQS::Queue")

    for handler in HANDLERS:
        function_id = _function_id(template, handler)
        assert f'"AWS/Lambda","Errors","FunctionName","<{function_id}>"' in body
        assert f'"AWS/Lambda","Duration","FunctionName","<{function_id}>"' in body
    # (the launch watch's event queue is a buffer, not a dead letter)
    dead_letters = [queue_id for queue_id in queues if "DeadLetterQueue" in queue_id]
    assert len(dead_letters) == len(HANDLERS)
    for queue_id in dead_letters:
        assert f'"AWS/SQS","ApproximateNumberOfMessagesVisible","QueueName","<{queue_id}.QueueName>"' in body


# ---- alarms --------------------------------------------------------------------------------------------------


def test_two_rejection_alarms_and_an_error_and_a_dead_letter_alarm_per_function(template: Template) -> None:
    alarms = _alarms(template)

    # Rejections: the reports' count (hourly) and EC2's own MetadataNoTokenRejected of every instance (5 minutes).
    assert len(alarms) == 2 + 2 * len(HANDLERS)
    topic_id = next(iter(template.find_resources("AWS::SNS::Topic")))
    for alarm in alarms:
        # Every alarm tells the report topic, and a quiet period (no data) is not an incident.
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["EvaluationPeriods"] == 1


def test_any_reported_rejection_raises_the_alarm(template: Template) -> None:
    # A labelled metric renders as a one-query "Metrics" list (the other such alarm is a Metrics Insights query).
    (rejected,) = [a for a in _alarms(template) if "Metrics" in a and "MetricStat" in a["Metrics"][0]]
    (query,) = rejected["Metrics"]
    stat = query["MetricStat"]

    assert stat["Metric"] == {
        "Namespace": NAMESPACE,
        "MetricName": action_metric(Action.REJECTED),
        "Dimensions": [{"Name": "service", "Value": SERVICE}],
    }
    assert (stat["Stat"], stat["Period"]) == ("Sum", 3600)
    assert (rejected["ComparisonOperator"], rejected["Threshold"]) == ("GreaterThanThreshold", 0)


@pytest.mark.parametrize("handler", HANDLERS)
def test_any_handler_error_raises_the_alarm(template: Template, handler: str) -> None:
    function_id = _function_id(template, handler)

    (alarm,) = [
        a
        for a in _alarms(template)
        if a.get("MetricName") == "Errors"
        and a["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    ]
    assert (alarm["Namespace"], alarm["Statistic"], alarm["Period"]) == ("AWS/Lambda", "Sum", 300)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)


def test_a_message_in_any_dead_letter_queue_raises_the_alarm(template: Template) -> None:
    queues = template.find_resources("AWS::SQS::Queue")

    alarmed = {
        a["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in _alarms(template)
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and a["Namespace"] == "AWS/SQS"
        and (a["ComparisonOperator"], a["Threshold"], a["Statistic"]) == ("GreaterThanOrEqualToThreshold", 1, "Maximum")
    }
    assert alarmed == {queue_id for queue_id in queues if "DeadLetterQueue" in queue_id}

"""Lambda entry point for the Slack notifier (an SNS subscription of the report topic)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from imds_enforcer.domain.metric_names import SLACK_POSTS, SLACK_POSTS_FAILED, SLACK_RECORDS_SKIPPED
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger, metrics
from imds_enforcer.workflows.slack_delivery import notify_slack

# SNS-to-Lambda events carry one record; its message id ties the log lines to the SNS delivery.
SNS_CORRELATION_PATH = "Records[0].Sns.MessageId"


@logger.inject_lambda_context(correlation_id_path=SNS_CORRELATION_PATH, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    settings = Settings.from_env(os.environ)
    outcome = notify_slack(event, settings=settings)
    metrics.add_metric(name=SLACK_POSTS, unit=MetricUnit.Count, value=outcome.posted)
    metrics.add_metric(name=SLACK_RECORDS_SKIPPED, unit=MetricUnit.Count, value=outcome.skipped)
    metrics.add_metric(name=SLACK_POSTS_FAILED, unit=MetricUnit.Count, value=len(outcome.failures))
    outcome.raise_for_failures()
    return outcome.summary()

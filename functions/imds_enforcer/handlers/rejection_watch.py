"""Lambda entry point for the rejection watch: the CloudWatch alarm on EC2's MetadataNoTokenRejected (through an
EventBridge rule on its state change) runs it within minutes of the first rejected IMDSv1 call."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.metric_names import EVENTS_IGNORED, EVENTS_PROCESSED
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger, metrics, record_findings
from imds_enforcer.workflows.rejection_watch import run_on_alarm


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, object]:
    settings = Settings.from_env(os.environ)
    deployment = Deployment.from_context(context, default_region=os.environ.get("AWS_REGION", ""))
    outcome = run_on_alarm(event, settings=settings, deployment=deployment)
    name = EVENTS_IGNORED if outcome.status == "ignored" else EVENTS_PROCESSED
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    record_findings(outcome.findings)
    return outcome.summary()

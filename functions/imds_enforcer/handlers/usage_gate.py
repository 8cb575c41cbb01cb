"""Lambda entry point for the usage gate (EventBridge schedule, the gate's own continuation schedule; an empty manual
invoke runs it too)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.metric_names import (
    CONTINUATIONS,
    DEFERRED,
    EVENTS_IGNORED,
    EVENTS_PROCESSED,
    MODIFY_THROTTLES,
    OPTIONAL_REMAINING,
)
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger, metrics, record_findings
from imds_enforcer.workflows.usage_gate import run_gate


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, object]:
    settings = Settings.from_env(os.environ)
    outcome = run_gate(
        event,
        settings=settings,
        deployment=Deployment.from_context(context, default_region=os.environ.get("AWS_REGION", "")),
        remaining_ms=context.get_remaining_time_in_millis,
        function_arn=context.invoked_function_arn,
    )
    if outcome.status == "ignored":
        metrics.add_metric(name=EVENTS_IGNORED, unit=MetricUnit.Count, value=1)
        return outcome.summary()
    metrics.add_metric(name=EVENTS_PROCESSED, unit=MetricUnit.Count, value=1)
    record_findings(outcome.findings)
    metrics.add_metric(name=OPTIONAL_REMAINING, unit=MetricUnit.Count, value=outcome.totals["optional_remaining"])
    metrics.add_metric(name=DEFERRED, unit=MetricUnit.Count, value=outcome.totals["deferred"])
    # This run's: a throttle slowed the pacer down (never a failure); a continuation carries the sweep on.
    metrics.add_metric(name=MODIFY_THROTTLES, unit=MetricUnit.Count, value=outcome.throttles)
    metrics.add_metric(name=CONTINUATIONS, unit=MetricUnit.Count, value=1 if outcome.status == "continued" else 0)
    return outcome.summary()

"""Lambda entry point for the launch watch. EventBridge delivers: EC2 state-change pending/running; CloudTrail
RunInstances and ModifyInstanceMetadataOptions (instances); CreateLaunchTemplate, CreateLaunchTemplateVersion,
ModifyLaunchTemplate, RegisterImage and Auto Scaling's CreateLaunchConfiguration (where instances come from)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from imds_enforcer.domain.deployment import Deployment
from imds_enforcer.domain.metric_names import EVENTS_IGNORED, EVENTS_PROCESSED
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger, metrics, record_findings
from imds_enforcer.workflows.launch_watch import watch_launch


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, object]:
    settings = Settings.from_env(os.environ)
    deployment = Deployment.from_context(context, default_region=os.environ.get("AWS_REGION", ""))
    outcome = watch_launch(
        event, settings=settings, deployment=deployment, remaining_ms=context.get_remaining_time_in_millis
    )
    name = EVENTS_IGNORED if outcome.status == "ignored" else EVENTS_PROCESSED
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    record_findings(outcome.findings)
    return outcome.summary()

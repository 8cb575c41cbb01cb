"""The single Logger and Metrics of the service (Powertools); handlers decorate, modules log.

Metric names live in ``imds_enforcer.domain.metric_names``, once: the handlers emit them and the CDK dashboard and
alarms read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from imds_enforcer.domain.metric_names import NAMESPACE, SERVICE, action_metric
from imds_enforcer.domain.report import Action, Finding

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def record_findings(findings: Iterable[Finding]) -> None:
    counted = Counter(finding.action for finding in findings)
    for action in Action:
        # Zeros too: an alarm on `Rejected` or a dashboard line needs datapoints, not gaps, on quiet runs.
        metrics.add_metric(name=action_metric(action), unit=MetricUnit.Count, value=counted[action])

"""The single Logger and Metrics of the service (Powertools); handlers decorate, modules log."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

logger = Logger(service="imds-enforcer")
metrics = Metrics(namespace="ImdsEnforcer", service="imds-enforcer")

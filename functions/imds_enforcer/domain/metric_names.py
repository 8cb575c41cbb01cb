"""Every metric name the service emits or reads, in one place: the handlers emit them, the gate reads EC2's, and the
CDK dashboard and alarms graph them. Pure constants, so the infrastructure imports them without an AWS adapter."""

from __future__ import annotations

from imds_enforcer.domain.report import Action

# EC2's own per-instance IMDS metrics (namespace AWS/EC2, dimension InstanceId).
EC2_NAMESPACE = "AWS/EC2"
NO_TOKEN = "MetadataNoToken"  # noqa: S105 - a metric name, not a secret
NO_TOKEN_REJECTED = "MetadataNoTokenRejected"  # noqa: S105
# The reference for "the instance ran that day": EC2 publishes it for every running instance (basic monitoring, 5 min).
RUNNING_REFERENCE = "CPUUtilization"

# The service's own metrics (Powertools EMF; every one carries the dimension service=SERVICE).
SERVICE = "imds-enforcer"
NAMESPACE = "ImdsEnforcer"
EVENTS_PROCESSED = "EventsProcessed"
EVENTS_IGNORED = "EventsIgnored"
OPTIONAL_REMAINING = "OptionalInstancesRemaining"
DEFERRED = "DeferredInstances"
# The usage gate's pacing and continuation: RequestLimitExceeded answers to its modifies (each one slowed the pacer;
# none is a failure), and the runs it scheduled to continue a sweep past one run's time budget.
MODIFY_THROTTLES = "ModifyThrottles"
CONTINUATIONS = "GateContinuations"
SLACK_POSTS = "SlackPosts"
SLACK_RECORDS_SKIPPED = "SlackRecordsSkipped"
SLACK_POSTS_FAILED = "SlackPostsFailed"


def action_metric(action: Action) -> str:
    """`Enforced`, `Rejected`, `InsufficientData`, ...: one count per finding action."""
    return "".join(part.capitalize() for part in action.value.split("_"))

"""What a run started by an event did, as its handler returns it: the launch watch's and the rejection watch's."""

from __future__ import annotations

from dataclasses import dataclass, field

from imds_enforcer.domain.report import Finding


@dataclass
class EventOutcome:
    status: str  # "ignored" or "processed"
    reason: str = ""
    findings: list[Finding] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    from_queue: bool = False  # the event came in an SQS batch (the launch watch's queue)

    def summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "status": self.status,
            "reason": self.reason,
            "findings": [finding.model_dump(mode="json", exclude_none=True) for finding in self.findings],
            "published": len(self.message_ids),
        }
        if self.from_queue:
            # SQS partial batch response: the batch either succeeded whole, or the run raised (a retry can fix it)
            # and SQS redelivers it whole; handling is idempotent, so nothing is done twice.
            summary["batchItemFailures"] = []
        return summary

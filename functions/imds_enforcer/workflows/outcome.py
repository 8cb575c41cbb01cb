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
    # Queue messages to deliver again (SQS partial batch response): events whose instances the run had no time for.
    redeliver: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "status": self.status,
            "reason": self.reason,
            "findings": [finding.model_dump(mode="json", exclude_none=True) for finding in self.findings],
            "published": len(self.message_ids),
        }
        if self.from_queue:
            # SQS partial batch response: the messages whose events the run had no time to finish are delivered again
            # (after the queue's visibility timeout); when the run raises (a retry can fix it), SQS redelivers the
            # batch whole. Handling is idempotent, so nothing is done twice.
            summary["batchItemFailures"] = [{"itemIdentifier": message_id} for message_id in self.redeliver]
        return summary

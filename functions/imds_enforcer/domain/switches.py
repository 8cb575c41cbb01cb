"""The durable record of a switch: what the service changed on an instance, kept until it is reported and tagged.

A switch (HttpTokens set to required) is recorded in the stack's state table right after the modify succeeds, before
anything else can fail: the record, not the report, is what makes a switch impossible to lose. It stays *open* while
the switch is not yet in a published report or the instance not yet tagged `imdsv2-enforcer:enforced-at`; an open
record is found again by

- the retry of the same event (the launch watch: the retry finds the instances already required, and reports the
  switches its earlier attempt recorded but could not publish);
- the usage gate's next sweep, which reports every open switch of its own and any launch watch's older than
  CLAIM_AFTER (that run is over, retries included), retries the tag, and watches the untagged ones from the record.

The record also settles overlaps: the first run to record a switch of an instance after another run read it as
optional is the one that switched it; the other run's modify changed nothing, and it says so instead of reporting the
same instance enforced twice. Pure: no boto3 here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, ENFORCED_BY_TAG

# A launch watch run (60 s timeout) and its two asynchronous retries (1 and 2 minutes later) are over well before
# this; an open record of a launch watch this old is one nobody else will report.
CLAIM_AFTER = timedelta(minutes=15)
# A record outlives the watch after the switch by a day, then DynamoDB's TTL deletes it.
RECORD_MARGIN = timedelta(days=1)
STAMP = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    instance_id: str
    enforced_at: datetime  # when the modify succeeded (the wall clock, not a run's reference time)
    enforced_by: str  # `launch_watch` or `usage_gate`
    event_id: str  # the event whose run switched it (a retry of that event carries the same id)
    stamp: str  # the value of the enforced-at tag (the run's time, as on the instance)
    reason: str  # the `enforced` finding's reason, so a late report says the same
    hop_limit: int | None = None
    token: str = ""  # unique per write: a botocore retry of our own write is not mistaken for another run's
    tagged: bool = False
    reported: bool = False

    @property
    def open(self) -> bool:
        return not (self.tagged and self.reported)

    def settled(self, *, tagged: bool | None = None, reported: bool | None = None) -> SwitchRecord:
        return replace(
            self,
            tagged=self.tagged if tagged is None else tagged,
            reported=self.reported if reported is None else reported,
        )

    def expires_at(self, watch_days: int) -> datetime:
        return self.enforced_at + timedelta(days=watch_days) + RECORD_MARGIN

    def claimable_by_gate(self, now: datetime, gate: str) -> bool:
        """Whether the gate reports this unreported switch: its own (gate runs never overlap), or a launch watch's
        whose run and retries are over."""
        return not self.reported and (self.enforced_by == gate or now - self.enforced_at >= CLAIM_AFTER)

    @property
    def tags(self) -> dict[str, str]:
        """The tags the instance should carry (and does, once `tagged`)."""
        return {ENFORCED_AT_TAG: self.stamp, ENFORCED_BY_TAG: self.enforced_by}

    def late_finding(self, why: str) -> Finding:
        """The `enforced` finding of a switch reported by a later run than the one that made it."""
        details = {
            "enforced_at": self.stamp,
            "enforced_by": self.enforced_by,
            "switched_at": self.enforced_at.astimezone(UTC).strftime(STAMP),
            "reported_late": "true",
        }
        if self.hop_limit is not None:
            details["hop_limit"] = str(self.hop_limit)
        return Finding(
            resource_id=self.instance_id,
            action=Action.ENFORCED,
            reason=f"{self.reason} [switched by the {self.enforced_by.replace('_', ' ')} at "
            f"{details['switched_at']} (event {self.event_id}); {why}]",
            details=details,
        )


def untagged_finding(record: SwitchRecord, code: str, message: str) -> Finding:
    """Enforced, but the who/when tags could not be written: the state table's record stands in for them."""
    return Finding(
        resource_id=record.instance_id,
        action=Action.FAILED,
        error_code=code,
        reason=f"CreateTags (enforced, but not tagged) failed: {code}"
        + (f" ({message})" if message else "")
        + ": the switch is recorded in the state table, so the gate still watches it for rejected IMDSv1 calls "
        "and tags it on its next sweep",
        details={"enforced_at": record.stamp, "untagged": "true"},
    )

"""Every switch on the record, reported and watched (domain/switches.py says why and how).

One `SwitchRecorder` per run that may switch instances (the launch watch, the usage gate): `enforce()` records each
switch through it right after the modify; the run settles its records (reported, tagged) after its report is
published, or leaves them open when it was not. Open records are claimed by the retry of the same event (the launch
watch) or by the gate's next sweep, which also retries the tag and watches the untagged ones from the record.

Without a state table (LEDGER_TABLE_NAME unset) there is no recorder: each switch is still logged as it is made
and reported, and overlaps are not detected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from imds_enforcer.aws import ec2, ledger, sns
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.aws.sns import ReportNotPublishedError
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.report import Action, Finding, Report
from imds_enforcer.domain.settings import ENFORCED_AT_TAG, Settings
from imds_enforcer.domain.switches import SwitchRecord
from imds_enforcer.observability import logger

# DynamoDB's own retries (botocore) come first; these are whole attempts more, for a record that must not be lost.
RECORD_ATTEMPTS = 3
TAG_ATTEMPTS = 3


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def log_switch(instance_id: str, *, enforced_by: str, stamp: str, event_id: str, hop_limit: int | None) -> None:
    """One structured line per switch, written the moment it is made: the record that survives every later failure
    (CloudWatch Logs Insights: `filter switch.instance_id = "i-..."`)."""
    logger.info(
        "instance switched to IMDSv2",
        extra={
            "switch": {
                "instance_id": instance_id,
                "enforced_by": enforced_by,
                "enforced_at": stamp,
                "event_id": event_id,
                "hop_limit": hop_limit,
            }
        },
    )


def tag_with_retry(tags_by_instance: Mapping[str, Mapping[str, str]]) -> dict[str, AwsError]:
    """Tag each instance, one CreateTags call per distinct tag set, each tried TAG_ATTEMPTS times; returns the
    instances whose tagging still failed, with the last error."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for instance_id, tags in tags_by_instance.items():
        groups.setdefault(tuple(sorted(tags.items())), []).append(instance_id)
    failed: dict[str, AwsError] = {}
    for tag_set, instance_ids in groups.items():
        error: AwsError | None = None
        for _ in range(TAG_ATTEMPTS):
            try:
                ec2.tag_instances(instance_ids, dict(tag_set))
            except AwsError as caught:
                # Refusals too: a tag is what lets the watch find the switch, worth two more calls to be sure.
                error = caught
                continue
            error = None
            break
        if error is not None:
            failed.update(dict.fromkeys(instance_ids, error))
    return failed


@dataclass
class SwitchRecorder:
    table: str
    enforced_by: str
    event_id: str
    watch_days: int
    # The wall clock when the run began, before it read any instance: a switch another run recorded after this
    # moment is one this run's modify repeated (it read the instance as optional before that switch).
    observed_before: datetime
    clock: Callable[[], datetime] = _wall_clock
    ours: dict[str, SwitchRecord] = field(default_factory=dict)
    claimed: dict[str, SwitchRecord] = field(default_factory=dict)
    unrecorded: dict[str, AwsError] = field(default_factory=dict)

    @classmethod
    def start(
        cls, settings: Settings, *, enforced_by: str, event_id: str | None, clock: Callable[[], datetime] = _wall_clock
    ) -> SwitchRecorder | None:
        """A recorder for this run, or None without a state table. Call it before the run reads any instance."""
        if not settings.LEDGER_TABLE_NAME:
            return None
        return cls(
            table=settings.LEDGER_TABLE_NAME,
            enforced_by=enforced_by,
            event_id=event_id or "-",
            watch_days=settings.WATCH_DAYS,
            observed_before=clock(),
            clock=clock,
        )

    def record(
        self, instance_id: str, *, stamp: str, reason: str, hop_limit: int | None, event_id: str = ""
    ) -> SwitchRecord | None:
        """Record this run's switch (under `event_id`, the event that named the instance, or the run's own). Returns
        the other run's record when that run switched the instance after this one read it (this run's modify changed
        nothing); None when the switch is this run's."""
        record = SwitchRecord(
            instance_id=instance_id,
            enforced_at=self.clock(),
            enforced_by=self.enforced_by,
            event_id=event_id or self.event_id,
            stamp=stamp,
            reason=reason,
            hop_limit=hop_limit,
            token=uuid.uuid4().hex,
        )
        error: AwsError | None = None
        for _ in range(RECORD_ATTEMPTS):
            try:
                other = ledger.record_switch(
                    self.table, record, observed_before=self.observed_before, watch_days=self.watch_days
                )
            except AwsError as caught:
                error = caught
                continue
            if other is not None and other.token != record.token:
                logger.info(
                    "already switched by another run: not reported twice",
                    extra={"instance_id": instance_id, "by": other.enforced_by, "event_id": other.event_id},
                )
                return other
            self.ours[instance_id] = record
            return None
        assert error is not None
        logger.error(
            "switch not recorded in the state table",
            extra={"instance_id": instance_id, "code": error.code, "operation": error.operation},
        )
        self.unrecorded[instance_id] = error
        return None

    def record_again(
        self, instance_id: str, *, stamp: str, reason: str, hop_limit: int | None, event_id: str = ""
    ) -> bool:
        """A second chance for a switch that could not be recorded and could not be tagged either: without one of
        the two, the watch after the switch cannot find it. True when it is recorded now."""
        if instance_id not in self.unrecorded:
            return instance_id in self.ours
        del self.unrecorded[instance_id]
        self.record(instance_id, stamp=stamp, reason=reason, hop_limit=hop_limit, event_id=event_id)
        return instance_id in self.ours

    def tagged(self, instance_ids: Iterable[str]) -> None:
        for instance_id in instance_ids:
            if instance_id in self.ours:
                self.ours[instance_id] = self.ours[instance_id].settled(tagged=True)

    def claim_for_event(self, instance_ids: Sequence[str], event_ids: Iterable[str]) -> list[Finding]:
        """The launch watch's retry: switches an earlier attempt of this event recorded but did not get reported
        (the instances are required now, so nothing else would say so)."""
        wanted = set(event_ids)
        candidates = [instance_id for instance_id in instance_ids if instance_id not in self.ours]
        if not candidates:
            return []
        try:
            records = ledger.switch_records(self.table, candidates)
        except AwsError as error:
            logger.warning(
                "switch records unreadable: an earlier attempt's switches wait for the gate", extra={"code": error.code}
            )
            return []
        findings = []
        for record in records.values():
            if not record.reported and record.event_id in wanted:
                self.claimed[record.instance_id] = record
                findings.append(record.late_finding("its earlier attempt's report did not go out"))
        return findings

    def settle(self, published: Iterable[Finding]) -> None:
        """After the publish: this run's and the claimed records are reported where their `enforced` finding went
        out, and leave the index once tagged too. The report of a sweep that took several runs also carries switches
        its earlier runs recorded: those records are read back and settled by the same rule (matched on the switch's
        stamp, so a later switch of the same instance is not settled by an older finding). A failure here only
        means a later run reports them again."""
        sent = {
            finding.resource_id: finding.details.get("enforced_at", "")
            for finding in published
            if finding.action is Action.ENFORCED
        }
        mine = {**self.claimed, **self.ours}
        settled = [record.settled(reported=record.reported or record.instance_id in sent) for record in mine.values()]
        earlier = sorted(instance_id for instance_id in sent if instance_id not in mine)
        if earlier:
            try:
                records = ledger.switch_records(self.table, earlier)
            except AwsError as error:
                logger.warning("earlier runs' switch records unreadable: left open", extra={"code": error.code})
                records = {}
            settled += [
                record.settled(reported=True)
                for record in records.values()
                if not record.reported and record.stamp == sent[record.instance_id]
            ]
        if not settled:
            return
        try:
            ledger.save_switches(self.table, settled, watch_days=self.watch_days)
        except AwsError as error:
            logger.warning("switch records not settled: a later run may report them again", extra={"code": error.code})

    def checkpoint(self) -> None:
        """A run whose report goes out later (a sweep's run before its last): its records saved as they stand now
        (tagged or not), still unreported."""
        self.settle(())


@dataclass
class OpenSwitches:
    """What the gate found among the open records: late findings, and the untagged switches to watch."""

    findings: list[Finding] = field(default_factory=list)
    untagged: list[SwitchRecord] = field(default_factory=list)


def reconcile(recorder: SwitchRecorder | None, *, now: datetime) -> OpenSwitches:
    """The gate, once a sweep: report every open switch nobody else will (its own, and the launch watch's whose run
    is over), retry the tags that failed, and return the still-untagged switches so the watch covers them."""
    found = OpenSwitches()
    if recorder is None:
        return found
    try:
        records = ledger.open_switches(recorder.table)
    except AwsError as error:
        logger.warning("open switch records unreadable: the next sweep looks again", extra={"code": error.code})
        return found
    untagged = {record.instance_id: record for record in records if not record.tagged}
    failed = tag_with_retry({instance_id: record.tags for instance_id, record in untagged.items()})
    now_ = recorder.clock()
    for record in records:
        retagged = record.instance_id in untagged and record.instance_id not in failed
        if retagged:
            record = record.settled(tagged=True)
        if record.claimable_by_gate(now_, recorder.enforced_by):
            found.findings.append(record.late_finding("the run that switched it could not publish its report"))
            recorder.claimed[record.instance_id] = record
        elif record.reported and retagged:
            # Reported by its own run (which has settled it), tagged only now: recorded as settled.
            recorder.claimed[record.instance_id] = record
        # Otherwise a launch watch run that may still be under way owns it: left as it is.
        if record.instance_id in untagged:
            # Untagged when the sweep listed the tagged instances (tagged just now or not): the watch needs it.
            found.untagged.append(record)
    if found.findings:
        logger.info(
            "open switches reported by this sweep", extra={"instances": [f.resource_id for f in found.findings]}
        )
    return found


def claim_unreported(recorder: SwitchRecorder | None, *, reported: Iterable[str]) -> list[Finding]:
    """The gate, at the end of a sweep: its own open switches that the sweep's report does not carry (a run of the
    sweep that stopped after its modifies and before it saved what it did, e.g. killed at its timeout: its retry
    found those instances already required). Gate runs never overlap, so these are the sweep's to report; their
    `enforced` findings join the report, and settling it settles them."""
    if recorder is None:
        return []
    carried = set(reported)
    try:
        records = ledger.open_switches(recorder.table)
    except AwsError as error:
        logger.warning("open switch records unreadable: the next sweep reports them", extra={"code": error.code})
        return []
    findings = []
    for record in records:
        if record.reported or record.enforced_by != recorder.enforced_by or record.instance_id in carried:
            continue
        if record.instance_id in recorder.ours:
            continue
        recorder.claimed[record.instance_id] = record
        findings.append(record.late_finding("the run of this sweep that switched it stopped before it saved that"))
    if findings:
        logger.info("switches of an interrupted run reported", extra={"instances": [f.resource_id for f in findings]})
    return findings


def watch_untagged(records: Sequence[SwitchRecord], tagged: Sequence[InstanceFacts]) -> list[InstanceFacts]:
    """The untagged switches as the watch sees them: described, with the tags they should carry taken from the
    record (so the watch reads their rejections since the switch, and a rollback knows the service switched them)."""
    known = {facts.instance_id for facts in tagged}
    wanted = {record.instance_id: record for record in records if record.instance_id not in known}
    if not wanted:
        return []
    try:
        described = ec2.describe_by_ids(sorted(wanted))
    except AwsError as error:
        logger.warning("untagged switches not described: watched next sweep", extra={"code": error.code})
        return []
    # The instance's own tags win where it has them (a person may have tagged it meanwhile).
    return [replace(facts, tags={**wanted[facts.instance_id].tags, **facts.tags}) for facts in described]


def publish_and_settle(
    report: Report, *, settings: Settings, recorder: SwitchRecorder | None, publish: bool = True
) -> list[str]:
    """Publish the report, then settle the switch records: reported where their finding went out (every part that
    failed is already in the log in full, and its switches stay open for the retry or the gate to report)."""
    try:
        message_ids = sns.publish(report, settings) if publish else []
    except ReportNotPublishedError as error:
        if recorder is not None:
            recorder.settle(error.published)
        raise
    if recorder is not None:
        # Without a topic (or publishing: the CLI) the report was logged or shown in full: that is its report.
        recorder.settle(report.findings)
    return message_ids


def with_switch_records(settings: Settings, instances: Sequence[InstanceFacts]) -> list[InstanceFacts]:
    """The instances, those this service switched but could not tag carrying the tags from their switch record (so a
    rollback knows the service switched them). Unchanged without a state table or when it cannot be read."""
    untagged = [facts.instance_id for facts in instances if ENFORCED_AT_TAG not in facts.tags]
    if not settings.LEDGER_TABLE_NAME or not untagged:
        return list(instances)
    try:
        records = ledger.switch_records(settings.LEDGER_TABLE_NAME, untagged)
    except AwsError as error:
        logger.warning("switch records unreadable: untagged switches look unswitched", extra={"code": error.code})
        return list(instances)
    return [
        replace(facts, tags={**records[facts.instance_id].tags, **facts.tags})
        if facts.instance_id in records
        else facts
        for facts in instances
    ]

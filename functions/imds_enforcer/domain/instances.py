"""What we know about one EC2 instance, read from a DescribeInstances item. No boto3 here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

GONE_STATES = frozenset({"shutting-down", "terminated"})
# A launch event this close to the instance's first launch is about a new instance; later ones are restarts.
NEW_INSTANCE_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    instance_id: str
    state: str
    http_tokens: str
    hop_limit: int
    http_endpoint: str
    tags: Mapping[str, str] = field(default_factory=dict)
    # The last start: EC2 resets it on every start of a stopped instance.
    launch_time: datetime | None = None
    # The first launch: the attach time of the primary network interface (device index 0), which stays from the
    # first launch across stops and starts (the EC2 API reference points to it for "the time that instance was
    # first launched"); the root volume's attach time where there is no such interface. None: unknown.
    first_launch_time: datetime | None = None
    image_id: str = ""
    # The AMI's name, filled in from DescribeImages where the workflow looked it up ("" = unknown).
    image_name: str = ""

    @property
    def accepts_imdsv1(self) -> bool:
        # Absent HttpTokens means the AWS default, which accepts IMDSv1 unless the account default says otherwise.
        return self.http_tokens != "required"

    @property
    def gone(self) -> bool:
        return self.state in GONE_STATES

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def is_new_at(self, moment: datetime) -> bool:
        """Whether an event at `moment` is this instance's first launch (not a restart of an older one).

        Unknown first launch: not new (the conservative answer: a restart is decided on evidence)."""
        if self.first_launch_time is None:
            return False
        return self.first_launch_time - NEW_INSTANCE_WINDOW <= moment <= self.first_launch_time + NEW_INSTANCE_WINDOW

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceFacts:
        options = item.get("MetadataOptions") or {}
        return cls(
            instance_id=item["InstanceId"],
            state=(item.get("State") or {}).get("Name", "unknown"),
            http_tokens=options.get("HttpTokens", "optional"),
            hop_limit=int(options.get("HttpPutResponseHopLimit", 1)),
            http_endpoint=options.get("HttpEndpoint", "enabled"),
            tags={tag["Key"]: tag.get("Value", "") for tag in item.get("Tags") or []},
            launch_time=_moment(item.get("LaunchTime")),
            first_launch_time=_first_launch(item),
            image_id=str(item.get("ImageId") or ""),
        )


def _first_launch(item: Mapping[str, Any]) -> datetime | None:
    for interface in item.get("NetworkInterfaces") or []:
        attachment = interface.get("Attachment") or {}
        if attachment.get("DeviceIndex") == 0 and attachment.get("NetworkCardIndex", 0) == 0:
            found = _moment(attachment.get("AttachTime"))
            if found is not None:
                return found
    root = item.get("RootDeviceName")
    for mapping in item.get("BlockDeviceMappings") or []:
        if root and mapping.get("DeviceName") == root:
            return _moment((mapping.get("Ebs") or {}).get("AttachTime"))
    return None


def _moment(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

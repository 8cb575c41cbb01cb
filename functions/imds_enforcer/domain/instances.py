"""What we know about one EC2 instance, read from a DescribeInstances item. No boto3 here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GONE_STATES = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    instance_id: str
    state: str
    http_tokens: str
    hop_limit: int
    http_endpoint: str
    tags: Mapping[str, str] = field(default_factory=dict)
    launch_time: datetime | None = None

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

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceFacts:
        options = item.get("MetadataOptions") or {}
        launch_time = item.get("LaunchTime")
        if isinstance(launch_time, str):
            launch_time = datetime.fromisoformat(launch_time.replace("Z", "+00:00"))
        return cls(
            instance_id=item["InstanceId"],
            state=(item.get("State") or {}).get("Name", "unknown"),
            http_tokens=options.get("HttpTokens", "optional"),
            hop_limit=int(options.get("HttpPutResponseHopLimit", 1)),
            http_endpoint=options.get("HttpEndpoint", "enabled"),
            tags={tag["Key"]: tag.get("Value", "") for tag in item.get("Tags") or []},
            launch_time=launch_time,
        )

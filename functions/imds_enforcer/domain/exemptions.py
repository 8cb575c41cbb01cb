"""The central exemption list: who may keep IMDSv1, decided in one place instead of by whoever can tag an instance.

An exemption tag is a privilege anyone allowed ec2:CreateTags holds. A platform team that wants exemptions granted
centrally stores this list in one SSM Parameter Store parameter (EXEMPTION_PARAMETER); it is read at every run and,
when set, replaces the tag: only the instances it names are exempt, each until its expiry date. The format:

    {"version": 1,
     "exemptions": [
       {"instance_id": "i-0123456789abcdef0", "reason": "vendor appliance (CHG-2291)", "expires": "2027-03-31"},
       {"tags": {"team": "legacy-billing", "env": "*"}, "reason": "licence server rewrite", "expires": "2027-01-15"}
     ]}

An entry names one instance, or a tag selector (every key must be on the instance, with that value or any value for
"*"), never both; every entry has a reason and an expiry date (an exemption that never ends is one nobody revisits).
An expired entry exempts nothing and is reported at every gate run until someone removes or renews it. A list that
does not validate is an error naming what is wrong, and the run changes nothing. Pure: no boto3 here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.report import Action, Finding

EXEMPTION_RESOURCE = "exemption"


class ExemptionListError(ValueError):
    """The central exemption list is unreadable or invalid; the message names the parameter and the problem."""


class Exemption(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: Annotated[str, Field(pattern=r"^i-[0-9a-zA-Z]{1,32}$")] | None = None
    tags: dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=256)]] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    expires: date

    @model_validator(mode="after")
    def _one_selector(self) -> Exemption:
        if (self.instance_id is None) == (self.tags is None):
            raise ValueError("name exactly one of instance_id or tags")
        if self.tags is not None and not self.tags:
            raise ValueError("tags must name at least one tag (an empty selector would exempt every instance)")
        return self

    @property
    def selector(self) -> str:
        if self.instance_id is not None:
            return self.instance_id
        return ",".join(f"{key}={value}" for key, value in sorted((self.tags or {}).items()))

    def matches(self, instance: InstanceFacts) -> bool:
        if self.instance_id is not None:
            return instance.instance_id == self.instance_id
        return all(
            key in instance.tags and (value == "*" or instance.tags[key] == value)
            for key, value in (self.tags or {}).items()
        )

    def active_on(self, today: date) -> bool:
        """Valid through its expiry date."""
        return today <= self.expires


class ExemptionList(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    exemptions: list[Exemption] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CentralExemptions:
    """The list as read for one run: where it came from, and the day its expiry dates are judged on."""

    parameter: str
    entries: tuple[Exemption, ...]
    today: date

    def exemption_of(self, instance: InstanceFacts) -> Exemption | None:
        return next((entry for entry in self.entries if entry.active_on(self.today) and entry.matches(instance)), None)

    def expired(self) -> list[Exemption]:
        return [entry for entry in self.entries if not entry.active_on(self.today)]

    def expired_findings(self) -> list[Finding]:
        """One finding per expired entry: it exempts nothing any more, and someone should renew or remove it."""
        return [
            Finding(
                resource_type=EXEMPTION_RESOURCE,
                resource_id=entry.selector,
                action=Action.FLAGGED,
                reason=f"exemption expired on {entry.expires.isoformat()} ({entry.reason}): what it covered is decided "
                f"on its evidence again; renew it in {self.parameter} or remove it",
                details={"expires": entry.expires.isoformat(), "parameter": self.parameter},
            )
            for entry in self.expired()
        ]


def parse_exemption_list(text: str, *, parameter: str, now: datetime) -> CentralExemptions:
    """The list in `text`, or ExemptionListError naming what is wrong (the JSON, or each invalid field by path)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExemptionListError(
            f"{parameter}: not JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    try:
        parsed = ExemptionList.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}"
            for issue in error.errors(include_url=False)[:10]
        )
        raise ExemptionListError(f"{parameter}: invalid exemption list: {problems}") from None
    return CentralExemptions(parameter=parameter, entries=tuple(parsed.exemptions), today=now.date())

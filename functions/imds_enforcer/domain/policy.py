"""Pure enforcement decisions shared by the launch watch and the usage gate: no boto3, no os.environ."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import Settings

# Tag keys that mark a container host: pods/tasks reach IMDS through one more network hop.
CONTAINER_HOST_TAG_KEYS = ("eks:cluster-name", "aws:eks:cluster-name", "eks:nodegroup-name", "AmazonECSManaged")
CONTAINER_HOST_TAG_PREFIXES = ("kubernetes.io/cluster/",)
CONTAINER_HOP_LIMIT = 2


def is_container_host(tags: Mapping[str, str], extra_keys: Iterable[str] = ()) -> bool:
    keys = set(CONTAINER_HOST_TAG_KEYS) | set(extra_keys)
    return any(key in keys or key.startswith(CONTAINER_HOST_TAG_PREFIXES) for key in tags)


@dataclass(frozen=True, slots=True)
class ModifyPlan:
    """One ModifyInstanceMetadataOptions: tokens required; the hop limit only ever raised, never lowered."""

    instance: InstanceFacts
    hop_limit: int | None  # None: leave the hop limit as it is

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


def modify_plan(instance: InstanceFacts, settings: Settings) -> ModifyPlan:
    needs_hop = is_container_host(instance.tags, settings.CONTAINER_HOST_TAG_KEYS)
    raise_to = CONTAINER_HOP_LIMIT if needs_hop and instance.hop_limit < CONTAINER_HOP_LIMIT else None
    return ModifyPlan(instance=instance, hop_limit=raise_to)


def is_exempt(instance: InstanceFacts, settings: Settings) -> bool:
    return settings.EXEMPT_TAG_KEY in instance.tags


def exempt_finding(instance: InstanceFacts, settings: Settings) -> Finding:
    value = instance.tags.get(settings.EXEMPT_TAG_KEY, "")
    reason = f"carries the exemption tag {settings.EXEMPT_TAG_KEY}" + (f" ({value})" if value else "")
    return Finding(resource_id=instance.instance_id, action=Action.EXEMPT, reason=reason)


def launch_decision(instance: InstanceFacts, settings: Settings) -> Finding | ModifyPlan | None:
    """What the launch watch does with one instance it saw launch (or regress): nothing, a finding, or a modify.

    A new instance has no usage history, so it may be enforced only in fix mode; it is reported either way.
    A pending instance is left to its `running` state-change event: EC2 refuses the modify while it is pending
    (IncorrectInstanceState), and reporting it now would report the same launch twice.
    """
    if instance.gone or instance.pending or not instance.accepts_imdsv1:
        return None
    if is_exempt(instance, settings):
        return exempt_finding(instance, settings)
    if not settings.fix:
        return Finding(
            resource_id=instance.instance_id,
            action=Action.FLAGGED,
            reason="HttpTokens is optional: the instance accepts IMDSv1 (flag mode, left unchanged)",
            details={"state": instance.state, "hop_limit": str(instance.hop_limit)},
        )
    return modify_plan(instance, settings)

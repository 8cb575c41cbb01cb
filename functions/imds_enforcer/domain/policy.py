"""Pure enforcement decisions shared by the launch watch and the usage gate: no boto3, no os.environ."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imds_enforcer.domain.exemptions import CentralExemptions
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import Settings

# Tag keys that mark a container host: pods/tasks reach IMDS through one more network hop.
CONTAINER_HOST_TAG_KEYS = ("eks:cluster-name", "aws:eks:cluster-name", "eks:nodegroup-name", "AmazonECSManaged")
CONTAINER_HOST_TAG_PREFIXES = ("kubernetes.io/cluster/",)
# The AMI families AWS publishes for container hosts (the names behind the SSM parameters
# /aws/service/eks/optimized-ami/..., /aws/service/bottlerocket/aws-k8s-*/..., /aws/service/bottlerocket/aws-ecs-*/...
# and /aws/service/ecs/optimized-ami/...). An instance launched from one of them is a container host whatever its tags.
CONTAINER_HOST_IMAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("EKS-optimized", re.compile(r"^amazon-eks-(?:(?:arm64|gpu)-)?node-")),
    ("Bottlerocket for EKS", re.compile(r"^bottlerocket-aws-k8s-")),
    ("Bottlerocket for ECS", re.compile(r"^bottlerocket-aws-ecs-")),
    ("ECS-optimized", re.compile(r"^(?:al2023-ami-ecs-|amzn2-ami-ecs-|amzn-ami-.*-amazon-ecs-optimized)")),
    ("ECS-optimized Windows", re.compile(r"^Windows_Server-.*-ECS_Optimized")),
    ("EKS-optimized Windows", re.compile(r"^Windows_Server-.*-EKS_Optimized")),
)
CONTAINER_HOP_LIMIT = 2


def container_host_reason(tags: Mapping[str, str], extra_keys: Iterable[str] = (), image_name: str = "") -> str | None:
    """Why this is a container host (a tag, or the AMI family it runs), or None when it is not one we recognise."""
    keys = set(CONTAINER_HOST_TAG_KEYS) | set(extra_keys)
    for key in sorted(tags):
        if key in keys or key.startswith(CONTAINER_HOST_TAG_PREFIXES):
            return f"tag {key}"
    for family, pattern in CONTAINER_HOST_IMAGES:
        if image_name and pattern.match(image_name):
            return f"{family} AMI {image_name}"
    return None


def is_container_host(tags: Mapping[str, str], extra_keys: Iterable[str] = (), image_name: str = "") -> bool:
    return container_host_reason(tags, extra_keys, image_name) is not None


def instance_container_reason(instance: InstanceFacts, settings: Settings) -> str | None:
    return container_host_reason(instance.tags, settings.CONTAINER_HOST_TAG_KEYS, instance.image_name)


@dataclass(frozen=True, slots=True)
class ModifyPlan:
    """One ModifyInstanceMetadataOptions: tokens required; the hop limit only ever raised, never lowered."""

    instance: InstanceFacts
    hop_limit: int | None  # None: leave the hop limit as it is
    container_reason: str | None = None  # why the hop limit is raised
    why: str = ""  # the grounds, for the report: the evidence, or "a new instance"
    # The tag that stops the change: checked again on the live instance just before the modify (the world moves).
    exempt_tag_key: str = ""
    # The event that named the instance (the launch watch): its switch is recorded under it, so that a retry of
    # that event finds the switch if its report never went out.
    event_id: str = ""

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


@dataclass(frozen=True, slots=True)
class PreparePlan:
    """A container host that still makes IMDSv1 calls at hop limit 1: raise the hop limit to 2 and leave the tokens
    optional, so the SDKs in its containers can get IMDSv2 tokens (one hop further) instead of falling back."""

    instance: InstanceFacts
    finding: Finding  # the `prepared` finding, with the evidence that blocks enforcement
    exempt_tag_key: str = ""

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


def modify_plan(
    instance: InstanceFacts, settings: Settings, *, raise_container_hop: bool = True, why: str = ""
) -> ModifyPlan:
    """Tokens required. A new container host (no evidence yet) also gets hop limit 2: its pods' SDKs would otherwise
    fall back to IMDSv1 and break. A container host proven quiet keeps its hop limit (`raise_container_hop=False`):
    nothing reached IMDS through the extra hop, and raising it would hand pods the node's credentials."""
    reason = instance_container_reason(instance, settings) if raise_container_hop else None
    raise_to = CONTAINER_HOP_LIMIT if reason and instance.hop_limit < CONTAINER_HOP_LIMIT else None
    return ModifyPlan(
        instance=instance,
        hop_limit=raise_to,
        container_reason=reason if raise_to else None,
        why=why,
        exempt_tag_key=settings.EXEMPT_TAG_KEY,
    )


def is_exempt(instance: InstanceFacts, settings: Settings) -> bool:
    """Exempt by the central list when one is configured (it replaces the tag), else by the exemption tag."""
    central = settings.exemptions
    if isinstance(central, CentralExemptions):
        return central.exemption_of(instance) is not None
    return settings.EXEMPT_TAG_KEY in instance.tags


def exempt_finding(instance: InstanceFacts, settings: Settings) -> Finding:
    central = settings.exemptions
    if isinstance(central, CentralExemptions):
        entry = central.exemption_of(instance)
        if entry is not None:
            return Finding(
                resource_id=instance.instance_id,
                action=Action.EXEMPT,
                reason=f"on the central exemption list ({central.parameter}: {entry.selector}) until "
                f"{entry.expires.isoformat()}: {entry.reason}",
                details={"expires": entry.expires.isoformat(), "exemption": entry.selector},
            )
    value = instance.tags.get(settings.EXEMPT_TAG_KEY, "")
    reason = f"carries the exemption tag {settings.EXEMPT_TAG_KEY}" + (f" ({value})" if value else "")
    return Finding(resource_id=instance.instance_id, action=Action.EXEMPT, reason=reason)


def launch_decision(instance: InstanceFacts, settings: Settings) -> Finding | ModifyPlan | None:
    """What the launch watch does with a new instance (or one set back to optional): nothing, a finding, or a modify.

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


# Checked again just before a paced modify: the plan was made from facts read earlier (a listing minutes ago, or a
# continuation's plan from the last run), and the instance may have changed since.


@dataclass(frozen=True, slots=True)
class Recheck:
    """What the live instance says about a plan: go ahead with `plan` (adjusted to the live facts), or skip it."""

    skip: str | None = None  # "gone", "already_required", "already_prepared", "exempt"
    finding: Finding | None = None  # what to report for a skip, when anything (an exemption)


def recheck_exempt(live: InstanceFacts, exempt_tag_key: str, settings: Settings | None = None) -> Recheck | None:
    """Exempt on the live instance? By the run's settings when given (the central list, when configured, replaces
    the tag), else by the plan's exemption tag (a plan carries it across a continuation)."""
    if settings is not None:
        if not is_exempt(live, settings):
            return None
        finding = exempt_finding(live, settings)
    elif exempt_tag_key and exempt_tag_key in live.tags:
        value = live.tags[exempt_tag_key]
        finding = Finding(
            resource_id=live.instance_id,
            action=Action.EXEMPT,
            reason=f"carries the exemption tag {exempt_tag_key}" + (f" ({value})" if value else ""),
        )
    else:
        return None
    return Recheck(
        skip="exempt",
        finding=finding.model_copy(
            update={
                "reason": finding.reason + ": exempted after the gate planned its change, which was not made",
                "details": {**finding.details, "state": live.state},
            }
        ),
    )


def recheck_modify(
    plan: ModifyPlan, live: InstanceFacts | None, settings: Settings | None = None
) -> ModifyPlan | Recheck:
    """The plan on the live instance's facts, or why it is skipped: gone, exempt since, or already required (by
    someone else since: the launch watch, a person). A hop limit raised since is never lowered."""
    if live is None or live.gone:
        return Recheck(skip="gone")
    exempt = recheck_exempt(live, plan.exempt_tag_key, settings)
    if exempt is not None:
        return exempt
    if not live.accepts_imdsv1:
        return Recheck(skip="already_required")
    hop_limit = plan.hop_limit if plan.hop_limit is not None and live.hop_limit < plan.hop_limit else None
    return ModifyPlan(
        instance=live,
        hop_limit=hop_limit,
        container_reason=plan.container_reason if hop_limit is not None else None,
        why=plan.why,
        exempt_tag_key=plan.exempt_tag_key,
    )


def recheck_prepare(
    plan: PreparePlan, live: InstanceFacts | None, settings: Settings | None = None
) -> PreparePlan | Recheck:
    """The preparation on the live instance, or why it is skipped (its hop limit already 2 or more, tokens already
    required: nothing left to prepare)."""
    if live is None or live.gone:
        return Recheck(skip="gone")
    exempt = recheck_exempt(live, plan.exempt_tag_key, settings)
    if exempt is not None:
        return exempt
    if not live.accepts_imdsv1:
        return Recheck(skip="already_required")
    if live.hop_limit >= CONTAINER_HOP_LIMIT:
        return Recheck(skip="already_prepared")
    return PreparePlan(instance=live, finding=plan.finding, exempt_tag_key=plan.exempt_tag_key)

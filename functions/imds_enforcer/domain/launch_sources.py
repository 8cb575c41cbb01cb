"""Pure decisions for where new instances come from: launch templates, launch configurations and AMIs.

No boto3 and no os.environ: facts are built from API items (`from_api`), and each decision returns a finding,
a plan for the adapter to carry out, or None (nothing to say).

Two readings that the whole module follows:
- `HttpTokens` absent counts as not required: the launch then falls back to the AMI's `ImdsSupport` and the account
  default, which this module cannot see per launch, so the template itself does not close the door.
- `HttpEndpoint: disabled` counts as compliant (no finding), even with tokens optional: with the endpoint off,
  neither IMDSv1 nor IMDSv2 answers, so there is nothing to steal. Turning the endpoint back on takes a new template
  version (CreateLaunchTemplateVersion, which the launch watch checks) or a new launch configuration (idem).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imds_enforcer.domain.policy import CONTAINER_HOP_LIMIT, is_container_host
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import Settings

LAUNCH_TEMPLATE = "launch_template"
LAUNCH_CONFIGURATION = "launch_configuration"
IMAGE = "image"
IMDS_V2_IMAGE = "v2.0"
# A launch template without HttpPutResponseHopLimit launches with the EC2 default of 1.
DEFAULT_HOP_LIMIT = 1
DEFAULT_VERSION = "$Default"
LATEST_VERSION = "$Latest"
# Service-linked roles are named AWSServiceRoleFor<Service>; a template created by one belongs to that service.
SERVICE_LINKED_ROLE = ":assumed-role/AWSServiceRoleFor"
# `aws:` tag keys are set by AWS services only; CloudFormation's mark the user's own stacks, which we may change.
USER_OWNED_AWS_TAG_PREFIXES = ("aws:cloudformation:",)
SERVICE_TAG_PREFIXES = ("eks:",)


def tag_map(items: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(tag.get("Key")): str(tag.get("Value", "")) for tag in items or () if tag.get("Key") is not None}


@dataclass(frozen=True, slots=True)
class MetadataFacts:
    """A template's or launch configuration's MetadataOptions, as set (None: not set)."""

    http_tokens: str | None = None
    http_endpoint: str | None = None
    hop_limit: int | None = None

    @classmethod
    def from_api(cls, options: Mapping[str, Any] | None) -> MetadataFacts:
        options = options or {}
        hop = options.get("HttpPutResponseHopLimit")
        return cls(
            http_tokens=options.get("HttpTokens"),
            http_endpoint=options.get("HttpEndpoint"),
            hop_limit=int(hop) if hop is not None else None,
        )

    @property
    def endpoint_disabled(self) -> bool:
        return self.http_endpoint == "disabled"

    @property
    def accepts_imdsv1(self) -> bool:
        return self.http_tokens != "required" and not self.endpoint_disabled

    @property
    def tokens_label(self) -> str:
        return self.http_tokens or "not set"


# --- launch templates ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    number: int
    data: Mapping[str, Any]
    created_by: str = ""

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> TemplateVersion:
        return cls(
            number=int(item["VersionNumber"]),
            data=item.get("LaunchTemplateData") or {},
            created_by=str(item.get("CreatedBy", "")),
        )

    @property
    def metadata(self) -> MetadataFacts:
        return MetadataFacts.from_api(self.data.get("MetadataOptions"))

    @property
    def instance_tags(self) -> dict[str, str]:
        """Tags the version gives the instances it launches (self-managed Kubernetes nodes carry theirs here)."""
        tags: dict[str, str] = {}
        for spec in self.data.get("TagSpecifications") or ():
            if spec.get("ResourceType") == "instance":
                tags.update(tag_map(spec.get("Tags")))
        return tags


@dataclass(frozen=True, slots=True)
class LaunchTemplateFacts:
    template_id: str
    name: str
    default_version: int
    latest_version: int
    tags: Mapping[str, str] = field(default_factory=dict)
    created_by: str = ""
    operator: str | None = None  # Operator.Principal of a template managed by a service provider

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> LaunchTemplateFacts:
        operator = item.get("Operator") or {}
        return cls(
            template_id=str(item["LaunchTemplateId"]),
            name=str(item.get("LaunchTemplateName", "")),
            default_version=int(item["DefaultVersionNumber"]),
            latest_version=int(item["LatestVersionNumber"]),
            tags=tag_map(item.get("Tags")),
            created_by=str(item.get("CreatedBy", "")),
            operator=str(operator.get("Principal") or "a service provider") if operator.get("Managed") else None,
        )


@dataclass(frozen=True, slots=True)
class GroupUse:
    """An Auto Scaling group launching from a template, with the version as the group names it."""

    group: str
    version: str  # "$Default", "$Latest" or a version number

    def label(self) -> str:
        return f"{self.group} ({self.version if self.version.startswith('$') else 'version ' + self.version})"


def template_users(
    groups: Iterable[Mapping[str, Any]], template_ids_by_name: Mapping[str, str]
) -> dict[str, list[GroupUse]]:
    """Template id -> the groups that launch from it, directly or through a MixedInstancesPolicy (its template, and
    the templates of its overrides).

    A group may name its template by id or by name; without a version it uses `$Default` (the Auto Scaling default).
    """
    users: dict[str, list[GroupUse]] = {}
    for group in groups:
        name = str(group.get("AutoScalingGroupName", ""))
        mixed = (group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}
        # An override may launch some instance types from another template: that template is used by the group too.
        overrides = [override.get("LaunchTemplateSpecification") for override in mixed.get("Overrides") or []]
        seen: set[tuple[str, str]] = set()
        for spec in (group.get("LaunchTemplate"), mixed.get("LaunchTemplateSpecification"), *overrides):
            if not spec:
                continue
            template_id = spec.get("LaunchTemplateId") or template_ids_by_name.get(str(spec.get("LaunchTemplateName")))
            version = str(spec.get("Version") or DEFAULT_VERSION)
            if template_id and (str(template_id), version) not in seen:
                seen.add((str(template_id), version))
                users.setdefault(str(template_id), []).append(GroupUse(group=name, version=version))
    return users


def configuration_users(groups: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Launch configuration name -> the groups that launch from it."""
    users: dict[str, list[str]] = {}
    for group in groups:
        config = group.get("LaunchConfigurationName")
        if config:
            users.setdefault(str(config), []).append(str(group.get("AutoScalingGroupName", "")))
    return users


def managed_by(template: LaunchTemplateFacts, versions: Iterable[TemplateVersion] = ()) -> str | None:
    """Who other than the account's own people owns this template, or None. Such a template is re-created or
    overwritten by its service (an EKS node group update, ...), so a version we add would be lost or, worse, fight
    the service: we flag it and say where to change it."""
    if template.operator:
        return f"managed by {template.operator} (Operator.Managed)"
    for created_by in (template.created_by, *(version.created_by for version in versions)):
        if SERVICE_LINKED_ROLE in created_by:
            role = created_by.split(":assumed-role/", 1)[1].split("/", 1)[0]
            return f"created by the service-linked role {role}"
    for key in sorted(template.tags):
        if key.startswith(SERVICE_TAG_PREFIXES):
            return f"managed by EKS (tag {key})"
        if key.startswith("aws:") and not key.startswith(USER_OWNED_AWS_TAG_PREFIXES):
            return f"managed by an AWS service (tag {key})"
    return None


def is_container_template(template: LaunchTemplateFacts, version: TemplateVersion, settings: Settings) -> bool:
    tags = {**version.instance_tags, **template.tags}
    return is_container_host(tags, settings.CONTAINER_HOST_TAG_KEYS)


def required_options(version: TemplateVersion, *, container: bool) -> dict[str, Any]:
    """The version's MetadataOptions with HttpTokens required, every other option kept; the hop limit only ever
    raised (to 2 for a container host, whose pods reach IMDS one hop further), never lowered. `State` is
    response-only and dropped."""
    options = {key: value for key, value in (version.data.get("MetadataOptions") or {}).items() if key != "State"}
    options["HttpTokens"] = "required"
    hop = version.metadata.hop_limit
    if container and (hop if hop is not None else DEFAULT_HOP_LIMIT) < CONTAINER_HOP_LIMIT:
        options["HttpPutResponseHopLimit"] = CONTAINER_HOP_LIMIT
    return options


@dataclass(frozen=True, slots=True)
class NewVersion:
    """One CreateLaunchTemplateVersion: the source version's data, with the metadata options replaced."""

    source: TemplateVersion
    metadata_options: Mapping[str, Any]
    make_default: bool

    def launch_template_data(self) -> dict[str, Any]:
        return {**self.source.data, "MetadataOptions": dict(self.metadata_options)}

    @property
    def hop_raised_to(self) -> int | None:
        new = self.metadata_options.get("HttpPutResponseHopLimit")
        return int(new) if new is not None and new != self.source.metadata.hop_limit else None


@dataclass(frozen=True, slots=True)
class TemplatePlan:
    """New versions for one template, in order: the new default first, then (when the latest differed from the
    default) a required copy of the latest, so `$Latest` keeps launching what it launched before."""

    template: LaunchTemplateFacts
    new_versions: tuple[NewVersion, ...]
    users: tuple[GroupUse, ...] | None
    open_versions: tuple[int, ...]


def template_decision(
    template: LaunchTemplateFacts,
    versions: Sequence[TemplateVersion],
    settings: Settings,
    *,
    users: Sequence[GroupUse] | None = None,
) -> Finding | TemplatePlan | None:
    """Flag, fix or exempt a launch template whose default or latest version accepts IMDSv1.

    `users`: the Auto Scaling groups that launch from it; None when they could not be listed.
    """
    by_number = {version.number: version for version in versions}
    default = by_number.get(template.default_version)
    latest = by_number.get(template.latest_version)
    open_versions = tuple(
        sorted(
            {version.number for version in (default, latest) if version is not None and version.metadata.accepts_imdsv1}
        )
    )
    if not open_versions:
        return None
    details = _template_details(template, by_number, open_versions, users)
    what = _template_problem(template, by_number, open_versions) + "; " + _users_text(users)
    if settings.EXEMPT_TAG_KEY in template.tags:
        value = template.tags[settings.EXEMPT_TAG_KEY]
        reason = f"carries the exemption tag {settings.EXEMPT_TAG_KEY}" + (f" ({value})" if value else "")
        return _template_finding(template, Action.EXEMPT, f"{reason}; {what}", details)
    owner = managed_by(template, versions)
    if owner is not None:
        return _template_finding(
            template,
            Action.FLAGGED,
            f"{what}; {owner}: never changed here, require IMDSv2 where that service defines the template "
            "(for EKS: the node group's launch template or AMI)",
            {**details, "managed_by": owner},
        )
    if not (settings.fix and settings.FIX_LAUNCH_TEMPLATES):
        why = "flag mode" if not settings.fix else "FIX_LAUNCH_TEMPLATES is off"
        return _template_finding(template, Action.FLAGGED, f"{what} ({why}, left unchanged)", details)
    if default is None or latest is None:
        # Cannot happen with a consistent describe; never build a version from data we did not see.
        return _template_finding(
            template,
            Action.FLAGGED,
            f"{what} (its default or latest version was not described: left unchanged)",
            details,
        )
    new_versions: list[NewVersion] = []
    if default.metadata.accepts_imdsv1:
        container = is_container_template(template, default, settings)
        new_versions.append(NewVersion(default, required_options(default, container=container), make_default=True))
    if latest.number != default.number and (latest.metadata.accepts_imdsv1 or new_versions):
        container = is_container_template(template, latest, settings)
        new_versions.append(NewVersion(latest, required_options(latest, container=container), make_default=False))
    return TemplatePlan(
        template=template,
        new_versions=tuple(new_versions),
        users=None if users is None else tuple(users),
        open_versions=open_versions,
    )


def enforced_template_finding(plan: TemplatePlan, created: Sequence[int]) -> Finding:
    """`created[i]` is the number of plan.new_versions[i]."""
    parts: list[str] = []
    details = {"name": plan.template.name, "previous_default_version": str(plan.template.default_version)}
    default_version = plan.template.default_version
    for new, number in zip(plan.new_versions, created, strict=True):
        if new.make_default:
            default_version = number
            parts.append(f"default version {new.source.number} -> new default version {number} (HttpTokens required)")
        else:
            parts.append(
                f"latest version {new.source.number} copied as version {number} with HttpTokens required, "
                "so $Latest keeps its content"
            )
        if new.hop_raised_to is not None:
            parts.append(f"hop limit raised to {new.hop_raised_to} in version {number} (container host)")
            details["hop_limit"] = str(new.hop_raised_to)
    details["default_version"] = str(default_version)
    details["latest_version"] = str(created[-1]) if created else str(plan.template.latest_version)
    details["created_versions"] = ",".join(str(number) for number in created)
    if plan.users:
        details["groups"] = ", ".join(use.label() for use in plan.users)
    reason = "; ".join(parts) + "; " + _users_text(plan.users)
    pinned = [use for use in plan.users or () if not use.version.startswith("$")]
    if pinned:
        reason += "; groups pinned to a version number keep launching it: " + ", ".join(use.label() for use in pinned)
    return _template_finding(plan.template, Action.ENFORCED, reason, details)


def _template_problem(
    template: LaunchTemplateFacts, by_number: Mapping[int, TemplateVersion], open_versions: Sequence[int]
) -> str:
    roles = []
    for number in open_versions:
        role = " and ".join(
            name
            for name, wanted in (("default", template.default_version), ("latest", template.latest_version))
            if wanted == number
        )
        roles.append(f"version {number} ({role}, HttpTokens {by_number[number].metadata.tokens_label})")
    name = f" {template.name}" if template.name else ""
    return f"launch template{name} accepts IMDSv1 in " + ", ".join(roles)


def _template_details(
    template: LaunchTemplateFacts,
    by_number: Mapping[int, TemplateVersion],
    open_versions: Sequence[int],
    users: Sequence[GroupUse] | None,
) -> dict[str, str]:
    details = {
        "name": template.name,
        "default_version": str(template.default_version),
        "latest_version": str(template.latest_version),
        "open_versions": ",".join(str(number) for number in open_versions),
        "http_tokens": by_number[open_versions[0]].metadata.tokens_label,
    }
    details["groups"] = "unknown" if users is None else ", ".join(use.label() for use in users)
    return details


def _users_text(users: Sequence[GroupUse] | None) -> str:
    if users is None:
        return "Auto Scaling groups unknown (DescribeAutoScalingGroups failed)"
    if not users:
        return "not used by any Auto Scaling group"
    return "used by " + ", ".join(use.label() for use in users)


def _template_finding(
    template: LaunchTemplateFacts, action: Action, reason: str, details: Mapping[str, str]
) -> Finding:
    return Finding(
        resource_type=LAUNCH_TEMPLATE,
        resource_id=template.template_id,
        action=action,
        reason=reason,
        details=dict(details),
    )


# --- launch configurations -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchConfigurationFacts:
    name: str
    metadata: MetadataFacts
    image_id: str = ""

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> LaunchConfigurationFacts:
        return cls(
            name=str(item["LaunchConfigurationName"]),
            metadata=MetadataFacts.from_api(item.get("MetadataOptions")),
            image_id=str(item.get("ImageId", "")),
        )


def launch_configuration_finding(
    config: LaunchConfigurationFacts, groups: Sequence[str] | None = None
) -> Finding | None:
    """Launch configurations cannot be changed (and carry no tags, so no exemption): one that accepts IMDSv1 is
    flagged, with its groups and the way out. An unused one is flagged too: a group can start using it again.

    `groups`: the Auto Scaling groups that use it; None when they could not be listed.
    """
    if not config.metadata.accepts_imdsv1:
        return None
    if groups is None:
        used = "Auto Scaling groups unknown (DescribeAutoScalingGroups failed)"
    elif groups:
        used = "used by " + ", ".join(groups)
    else:
        used = "not used by any group"
    reason = (
        f"launch configuration accepts IMDSv1 (HttpTokens {config.metadata.tokens_label}); {used}; launch "
        "configurations cannot be changed: move the groups to a launch template that requires IMDSv2"
    )
    details = {
        "http_tokens": config.metadata.tokens_label,
        "groups": "unknown" if groups is None else ", ".join(groups),
    }
    if config.image_id:
        details["image_id"] = config.image_id
    return Finding(
        resource_type=LAUNCH_CONFIGURATION,
        resource_id=config.name,
        action=Action.FLAGGED,
        reason=reason,
        details=details,
    )


# --- AMIs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageFacts:
    image_id: str
    name: str = ""
    imds_support: str | None = None
    state: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ImageFacts:
        return cls(
            image_id=str(item["ImageId"]),
            name=str(item.get("Name", "")),
            imds_support=item.get("ImdsSupport"),
            state=str(item.get("State", "")),
            tags=tag_map(item.get("Tags")),
        )

    @property
    def requires_imdsv2(self) -> bool:
        return self.imds_support == IMDS_V2_IMAGE


@dataclass(frozen=True, slots=True)
class ImagePlan:
    image: ImageFacts


def image_decision(image: ImageFacts, settings: Settings) -> Finding | ImagePlan | None:
    """An own AMI without `ImdsSupport: v2.0` launches instances that accept IMDSv1 unless the launch (template,
    request or account default) says otherwise. The fix is opt-in on top of fix mode because AWS cannot undo it."""
    if image.requires_imdsv2:
        return None
    details = {"name": image.name, "imds_support": image.imds_support or "not set", "state": image.state}
    if settings.EXEMPT_TAG_KEY in image.tags:
        value = image.tags[settings.EXEMPT_TAG_KEY]
        reason = f"carries the exemption tag {settings.EXEMPT_TAG_KEY}" + (f" ({value})" if value else "")
        return Finding(
            resource_type=IMAGE, resource_id=image.image_id, action=Action.EXEMPT, reason=reason, details=details
        )
    if not (settings.fix and settings.FIX_IMAGES):
        why = "flag mode" if not settings.fix else "FIX_IMAGES is off"
        return Finding(
            resource_type=IMAGE,
            resource_id=image.image_id,
            action=Action.FLAGGED,
            reason="AMI without ImdsSupport v2.0: instances launched from it accept IMDSv1 unless their launch "
            f"requires IMDSv2 ({why}, left unchanged)",
            details=details,
        )
    return ImagePlan(image=image)


def enforced_image_finding(image: ImageFacts) -> Finding:
    return Finding(
        resource_type=IMAGE,
        resource_id=image.image_id,
        action=Action.ENFORCED,
        reason="ImdsSupport set to v2.0: instances launched from this AMI require IMDSv2 unless their launch says "
        "otherwise; this cannot be undone on the AMI (only a new AMI can go back)",
        details={
            "name": image.name,
            "imds_support": IMDS_V2_IMAGE,
            "previous_imds_support": image.imds_support or "not set",
        },
    )

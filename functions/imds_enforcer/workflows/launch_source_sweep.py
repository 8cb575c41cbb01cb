"""Check (and, opt-in, fix) where new instances come from: launch templates, launch configurations, own AMIs.

Used by the usage gate (the whole region), the launch watch (the resources a CloudTrail event names) and the CLI.
Each check flags in flag mode and fixes per its opt-in in fix mode (FIX_LAUNCH_TEMPLATES, FIX_IMAGES; launch
configurations cannot be changed). An AWS error on one resource becomes a `failed` finding and never stops the
others; failures a retry can fix are collected in `SourceOutcome.unexpected_errors`, so that the gate and the launch
watch can raise after reporting, as they do for instances (a refusal is reported and not raised).

The three `check_*` functions return the findings only (the CLI's view: a failed finding carries its code);
the `sweep_*` functions return the whole outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imds_enforcer.aws import autoscaling, ec2
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.launch_sources import (
    IMAGE,
    LAUNCH_CONFIGURATION,
    LAUNCH_TEMPLATE,
    GroupUse,
    ImageFacts,
    ImagePlan,
    LaunchConfigurationFacts,
    LaunchTemplateFacts,
    TemplatePlan,
    TemplateVersion,
    configuration_users,
    enforced_image_finding,
    enforced_template_finding,
    image_decision,
    launch_configuration_finding,
    template_decision,
    template_users,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger

# The resource id of a finding about a whole listing that failed (no single resource to name).
ALL_RESOURCES = "*"
AUTO_SCALING_GROUP = "auto_scaling_group"
VERSION_DESCRIPTION = "imds-enforcer: HttpTokens required (copied from version {source})"

T = TypeVar("T")


@dataclass
class SourceOutcome:
    findings: list[Finding] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)

    def fail(self, resource_id: str, error: AwsError, operation: str, resource_type: str) -> None:
        self.findings.append(error.finding(resource_id, operation, resource_type=resource_type))
        context = {"operation": operation, "resource_id": resource_id, "code": error.code}
        if error.expected_for_sources:
            logger.warning("AWS call failed", extra=context)
        elif error.retryable:
            logger.error("AWS call failed: the run raises after its report so that a retry can fix it", extra=context)
            self.unexpected_errors.append(f"{operation} {resource_id}: {error.code}")
        else:
            logger.error("AWS call refused: reported, not retried", extra=context)

    def extend(self, other: SourceOutcome) -> None:
        self.findings.extend(other.findings)
        self.unexpected_errors.extend(other.unexpected_errors)


def check_launch_templates(settings: Settings, *, template_ids: Sequence[str] | None = None) -> list[Finding]:
    return sweep_launch_templates(settings, template_ids=template_ids).findings


def check_launch_configurations(settings: Settings, *, names: Sequence[str] | None = None) -> list[Finding]:
    return sweep_launch_configurations(settings, names=names).findings


def check_images(settings: Settings, *, image_ids: Sequence[str] | None = None) -> list[Finding]:
    return sweep_images(settings, image_ids=image_ids).findings


# --- launch templates ------------------------------------------------------------------------------------------


def sweep_launch_templates(settings: Settings, *, template_ids: Sequence[str] | None = None) -> SourceOutcome:
    """Every template of the region (None) or the named ones: their default and latest versions."""
    outcome = SourceOutcome()
    listed = _templates_with_versions(template_ids, outcome)
    if not listed:
        return outcome
    groups = _groups(outcome)
    names = {template.name: template.template_id for template, _ in listed}
    users = None if groups is None else template_users(groups, names)
    for template, versions in listed:
        uses: Sequence[GroupUse] | None = None if users is None else users.get(template.template_id, [])
        decision = template_decision(template, versions, settings, users=uses)
        if isinstance(decision, Finding):
            outcome.findings.append(decision)
        elif isinstance(decision, TemplatePlan):
            _fix_template(decision, outcome)
    return outcome


def _templates_with_versions(
    template_ids: Sequence[str] | None, outcome: SourceOutcome
) -> list[tuple[LaunchTemplateFacts, list[TemplateVersion]]]:
    if template_ids is None:
        # The whole region: one paginated listing of templates, one of every template's default and latest versions.
        templates = _listing(
            lambda: list(ec2.iter_launch_templates()), "DescribeLaunchTemplates", LAUNCH_TEMPLATE, outcome
        )
        versions = _listing(ec2.default_and_latest_versions, "DescribeLaunchTemplateVersions", LAUNCH_TEMPLATE, outcome)
        if templates is None or versions is None:
            return []
        by_template: dict[str, list[TemplateVersion]] = {}
        for item in versions:
            by_template.setdefault(str(item.get("LaunchTemplateId")), []).append(TemplateVersion.from_api(item))
        return [
            (facts, by_template.get(facts.template_id, []))
            for facts in (LaunchTemplateFacts.from_api(item) for item in templates)
        ]
    listed: list[tuple[LaunchTemplateFacts, list[TemplateVersion]]] = []
    for template_id in dict.fromkeys(template_ids):
        operation = "DescribeLaunchTemplates"
        try:
            found = ec2.describe_launch_template(template_id)
            if found is None:
                outcome.findings.append(_template_not_found(template_id))
                continue
            operation = "DescribeLaunchTemplateVersions"
            described = [TemplateVersion.from_api(version) for version in ec2.default_and_latest_versions(template_id)]
        except AwsError as error:
            outcome.fail(template_id, error, operation, LAUNCH_TEMPLATE)
            continue
        listed.append((LaunchTemplateFacts.from_api(found), described))
    return listed


def _template_not_found(template_id: str) -> Finding:
    return Finding(
        resource_type=LAUNCH_TEMPLATE,
        resource_id=template_id,
        action=Action.FAILED,
        error_code="InvalidLaunchTemplateId.NotFound",
        reason="DescribeLaunchTemplates does not list it (deleted since the event, or not yet visible)",
    )


def _fix_template(plan: TemplatePlan, outcome: SourceOutcome) -> None:
    """New versions first, the default switched last: a failure half-way leaves the old default in place (and a
    spare version, named in the finding), never a default we did not finish."""
    template_id = plan.template.template_id
    created: list[int] = []
    try:
        for new in plan.new_versions:
            created.append(
                ec2.create_launch_template_version(
                    template_id,
                    source_version=new.source.number,
                    data=new.launch_template_data(),
                    description=VERSION_DESCRIPTION.format(source=new.source.number),
                    client_token=f"imds-enforcer-{template_id}-{new.source.number}",
                )
            )
        defaults = [number for new, number in zip(plan.new_versions, created, strict=True) if new.make_default]
        if defaults:
            ec2.set_default_launch_template_version(template_id, defaults[0])
    except AwsError as error:
        operation = "CreateLaunchTemplateVersion" if len(created) < len(plan.new_versions) else "ModifyLaunchTemplate"
        if created:
            operation += f" (created version(s) {', '.join(map(str, created))}, default unchanged)"
        outcome.fail(template_id, error, operation, LAUNCH_TEMPLATE)
        return
    outcome.findings.append(enforced_template_finding(plan, created))


# --- launch configurations -------------------------------------------------------------------------------------


def sweep_launch_configurations(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    """Every launch configuration of the region (None) or the named ones. Only ever flagged: they cannot change.
    `settings` is taken for the same call shape as the other checks."""
    outcome = SourceOutcome()
    listing = lambda: list(autoscaling.iter_launch_configurations(names))  # noqa: E731 - one-line thunk
    configs = _listing(listing, "DescribeLaunchConfigurations", LAUNCH_CONFIGURATION, outcome)
    open_configs = [
        facts
        for facts in (LaunchConfigurationFacts.from_api(item) for item in configs or [])
        if facts.metadata.accepts_imdsv1
    ]
    if names is not None:
        missing = set(names) - {str(item.get("LaunchConfigurationName")) for item in configs or []}
        if missing and configs is not None:
            logger.info("launch configurations not listed (deleted since?)", extra={"names": sorted(missing)})
    if not open_configs:
        return outcome
    groups = _groups(outcome)
    users = None if groups is None else configuration_users(groups)
    for facts in open_configs:
        finding = launch_configuration_finding(facts, None if users is None else users.get(facts.name, []))
        if finding is not None:
            outcome.findings.append(finding)
    return outcome


# --- AMIs ------------------------------------------------------------------------------------------------------


def sweep_images(settings: Settings, *, image_ids: Sequence[str] | None = None) -> SourceOutcome:
    """The account's own AMIs (None) or the named ones among them (another account's AMI is never touched)."""
    outcome = SourceOutcome()
    try:
        items = list(ec2.iter_own_images(None if image_ids is None else list(dict.fromkeys(image_ids))))
    except AwsError as error:
        for resource_id in [ALL_RESOURCES] if image_ids is None else list(dict.fromkeys(image_ids)):
            outcome.fail(resource_id, error, "DescribeImages", IMAGE)
        return outcome
    if image_ids is not None:
        missing = set(image_ids) - {item.get("ImageId") for item in items}
        if missing:
            logger.info("not an AMI of this account (or gone): left alone", extra={"image_ids": sorted(missing)})
    for facts in (ImageFacts.from_api(item) for item in items):
        decision = image_decision(facts, settings)
        if isinstance(decision, Finding):
            outcome.findings.append(decision)
        elif isinstance(decision, ImagePlan):
            try:
                ec2.require_imds_v2_image(facts.image_id)
            except AwsError as error:
                outcome.fail(facts.image_id, error, "ModifyImageAttribute", IMAGE)
                continue
            outcome.findings.append(enforced_image_finding(facts))
    return outcome


# --- shared ----------------------------------------------------------------------------------------------------


def _groups(outcome: SourceOutcome) -> list[Mapping[str, Any]] | None:
    """The region's Auto Scaling groups, or None (reported as failed) when they cannot be listed: the findings then
    say the groups are unknown, and the checks go on."""
    groups: list[Mapping[str, Any]] | None = _listing(
        lambda: list(autoscaling.iter_groups()), "DescribeAutoScalingGroups", AUTO_SCALING_GROUP, outcome
    )
    return groups


def _listing(
    call: Callable[[], Iterable[T]], operation: str, resource_type: str, outcome: SourceOutcome
) -> list[T] | None:
    try:
        return list(call())
    except AwsError as error:
        outcome.fail(ALL_RESOURCES, error, operation, resource_type)
        return None

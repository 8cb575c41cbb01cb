"""Check (and, opt-in, fix) the IMDS doors outside EC2 instances: SageMaker notebook instances, Lightsail instances,
Elastic Beanstalk environments, Batch compute environments, EKS managed node groups, ECS capacity providers and EMR
clusters (decisions in `domain.doors`).

Used like the launch-source checks: the usage gate runs every `DOOR_CHECKS` entry after them (so a launch template
fixed there already counts here), the CLI audit runs them through the gate in flag mode, and the launch watch runs
one with the names a CloudTrail event gives. An AWS error on one resource becomes a `failed` finding and never stops
the others; codes we do not expect are collected in `unexpected_errors` for the caller to raise after reporting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imds_enforcer.aws import batch, beanstalk, ecs, eks, emr, launch_paths, lightsail, sagemaker
from imds_enforcer.aws.errors import EXPECTED_SOURCE_ERROR_CODES, AwsError
from imds_enforcer.domain.doors import (
    BATCH_COMPUTE_ENVIRONMENT,
    BATCH_FIX,
    BEANSTALK_ENVIRONMENT,
    BEANSTALK_GONE,
    ECS_CAPACITY_PROVIDER,
    ECS_FIX,
    EKS_DEFAULT_FIX,
    EKS_FIX,
    EKS_NODEGROUP,
    EMR_CLUSTER,
    LIGHTSAIL_INSTANCE,
    SAGEMAKER_NOTEBOOK,
    EnvironmentFacts,
    LaunchDoor,
    LaunchSource,
    LightsailFacts,
    LightsailPlan,
    NotebookFacts,
    NotebookPlan,
    batch_default_source,
    beanstalk_finding,
    eks_generated_source,
    emr_source,
    enforced_lightsail_finding,
    enforced_notebook_finding,
    launch_configuration_source,
    launch_door_decision,
    lightsail_decision,
    notebook_decision,
    tag_map,
    template_source,
)
from imds_enforcer.domain.report import Finding
from imds_enforcer.domain.settings import Settings
from imds_enforcer.observability import logger
from imds_enforcer.workflows.launch_source_sweep import ALL_RESOURCES, SourceOutcome

# Answers that describe the resource or the region (gone, refused in its state, not set up here), not a fault of
# ours: reported on the resource, and the run goes on. SageMaker's ValidationException is its refusal to change a
# notebook that is not stopped; Lightsail's InvalidInput/OperationFailure its refusal of an instance's blueprint.
EXPECTED_DOOR_ERROR_CODES = EXPECTED_SOURCE_ERROR_CODES | {
    "ThrottlingException",
    "TooManyRequestsException",
    "ValidationException",
    "ResourceNotFoundException",
    "ResourceInUse",
    "ResourceInUseException",
    "ClusterNotFoundException",
    "ClientException",
    "InvalidRequestException",
    "InvalidParameterValue",
    "InvalidInputException",
    "NotFoundException",
    "OperationFailureException",
    "AccountSetupInProgressException",
    "RegionSetupInProgressException",
    "OptInRequired",
    "SubscriptionRequiredException",
}
EMR_LIVE_STATES = frozenset(emr.LIVE_STATES)
EKS_GONE = frozenset({"DELETING"})
BATCH_GONE = frozenset({"DELETING", "DELETED"})


def _fail(outcome: SourceOutcome, resource_id: str, error: AwsError, resource_type: str) -> None:
    outcome.findings.append(error.finding(resource_id, resource_type=resource_type))
    context = {"operation": error.operation, "resource_id": resource_id, "code": error.code}
    if error.code in EXPECTED_DOOR_ERROR_CODES:
        logger.warning("AWS call failed", extra=context)
    else:
        logger.error("unexpected AWS error", extra=context)
        outcome.unexpected_errors.append(f"{error.operation} {resource_id}: {error.code}")


def _add(outcome: SourceOutcome, finding: Finding | None) -> None:
    if finding is not None:
        outcome.findings.append(finding)


# --- SageMaker notebook instances --------------------------------------------------------------------------------


def sweep_sagemaker_notebooks(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    outcome = SourceOutcome()
    if names is None:
        try:
            names = list(sagemaker.iter_notebook_names())
        except AwsError as error:
            _fail(outcome, ALL_RESOURCES, error, SAGEMAKER_NOTEBOOK)
            return outcome
    for name in dict.fromkeys(names):
        try:
            item = sagemaker.describe_notebook(name)
            if item is None:
                logger.info("notebook instance gone", extra={"notebook": name})
                continue
            facts = NotebookFacts.from_api(item)
            if facts.accepts_imdsv1:
                # Tags only for the ones that matter (the exemption): one ListTags each, not one per notebook.
                facts = NotebookFacts.from_api(item, tag_map(sagemaker.notebook_tags(facts.arn)))
        except AwsError as error:
            _fail(outcome, name, error, SAGEMAKER_NOTEBOOK)
            continue
        decision = notebook_decision(facts, settings)
        if isinstance(decision, NotebookPlan):
            try:
                sagemaker.require_imdsv2(facts.name)
            except AwsError as error:
                _fail(outcome, facts.name, error, SAGEMAKER_NOTEBOOK)
                continue
            outcome.findings.append(enforced_notebook_finding(facts))
        else:
            _add(outcome, decision)
    return outcome


# --- Lightsail instances -----------------------------------------------------------------------------------------


def sweep_lightsail_instances(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    outcome = SourceOutcome()
    if not lightsail.available():
        logger.info("Lightsail is not offered in this region: nothing to check")
        return outcome
    items: list[Mapping[str, Any]] = []
    if names is None:
        try:
            items = list(lightsail.iter_instances())
        except AwsError as error:
            _fail(outcome, ALL_RESOURCES, error, LIGHTSAIL_INSTANCE)
            return outcome
    else:
        for name in dict.fromkeys(names):
            try:
                found = lightsail.get_instance(name)
            except AwsError as error:
                _fail(outcome, name, error, LIGHTSAIL_INSTANCE)
                continue
            if found is not None:
                items.append(found)
    for item in items:
        facts = LightsailFacts.from_api(item)
        decision = lightsail_decision(facts, settings)
        if isinstance(decision, LightsailPlan):
            try:
                status = lightsail.require_tokens(facts.name)
            except AwsError as error:
                _fail(outcome, facts.name, error, LIGHTSAIL_INSTANCE)
                continue
            outcome.findings.append(enforced_lightsail_finding(facts, status))
        else:
            _add(outcome, decision)
    return outcome


# --- Elastic Beanstalk environments ------------------------------------------------------------------------------


def sweep_beanstalk_environments(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    """Only ever flagged (`settings` is taken for the same call shape as the other checks)."""
    outcome = SourceOutcome()
    try:
        environments = beanstalk.environments(None if names is None else list(dict.fromkeys(names)))
    except AwsError as error:
        for resource_id in [ALL_RESOURCES] if names is None else list(dict.fromkeys(names)):
            _fail(outcome, resource_id, error, BEANSTALK_ENVIRONMENT)
        return outcome
    for item in environments:
        name = str(item.get("EnvironmentName", ""))
        if item.get("Status") in BEANSTALK_GONE:
            continue
        try:
            options = beanstalk.option_settings(str(item.get("ApplicationName", "")), name)
        except AwsError as error:
            _fail(outcome, name, error, BEANSTALK_ENVIRONMENT)
            continue
        _add(outcome, beanstalk_finding(EnvironmentFacts.from_api(item, options)))
    return outcome


# --- doors that launch from a launch template (or a security configuration) --------------------------------------


class _Templates:
    """Launch template versions as doors name them, each looked up once a sweep (many doors share a template)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, str], Mapping[str, Any] | None] = {}

    def source(
        self, spec: Mapping[str, Any], *, fix: str, keys: tuple[str, str, str], owner: str = "launch template"
    ) -> LaunchSource:
        """`spec` names a template the way its service spells it; `keys` are its (id, name, version) keys."""
        id_key, name_key, version_key = keys
        template_id = str(spec.get(id_key) or "")
        template_name = str(spec.get(name_key) or "")
        version = str(spec.get(version_key) or "$Default")
        key = (template_id, template_name, version)
        if key not in self._found:
            self._found[key] = launch_paths.template_version(
                template_id=template_id or None, template_name=template_name or None, version=version
            )
        resolved = self._found[key]
        if resolved is not None:
            template_id = template_id or str(resolved.get("LaunchTemplateId", ""))
            template_name = template_name or str(resolved.get("LaunchTemplateName", ""))
        return template_source(
            template_id=template_id,
            template_name=template_name,
            requested_version=version,
            resolved=resolved,
            fix=fix,
            owner=owner,
        )


EC2_SPEC_KEYS = ("LaunchTemplateId", "LaunchTemplateName", "Version")


def _group_source(group: Mapping[str, Any], templates: _Templates, *, fix: str, owner: str) -> LaunchSource | None:
    """What an Auto Scaling group launches from: its template (direct or mixed instances) or launch configuration."""
    spec = group.get("LaunchTemplate") or ((group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}).get(
        "LaunchTemplateSpecification"
    )
    if spec:
        return templates.source(spec, fix=fix, owner=owner, keys=EC2_SPEC_KEYS)
    name = group.get("LaunchConfigurationName")
    if name:
        item = launch_paths.launch_configuration(str(name))
        return launch_configuration_source(str(name), item.get("MetadataOptions") if item else None, fix)
    return None


def sweep_batch_compute_environments(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    outcome = SourceOutcome()
    try:
        environments = batch.compute_environments(None if names is None else list(dict.fromkeys(names)))
    except AwsError as error:
        for resource_id in [ALL_RESOURCES] if names is None else list(dict.fromkeys(names)):
            _fail(outcome, resource_id, error, BATCH_COMPUTE_ENVIRONMENT)
        return outcome
    templates = _Templates()
    for item in environments:
        name = str(item.get("computeEnvironmentName", ""))
        resources: Mapping[str, Any] = item.get("computeResources") or {}
        # Fargate has no IMDS; an unmanaged environment runs the instances its owner launches (checked as instances).
        if (
            item.get("type") != "MANAGED"
            or resources.get("type") not in ("EC2", "SPOT")
            or item.get("status") in BATCH_GONE
        ):
            continue
        door = LaunchDoor(
            resource_type=BATCH_COMPUTE_ENVIRONMENT,
            resource_id=name,
            title=f"Batch compute environment {name}",
            tags=tag_map(item.get("tags")),
            details={"arn": str(item.get("computeEnvironmentArn", "")), "state": str(item.get("state", ""))},
        )
        try:
            template = resources.get("launchTemplate")
            if template:
                source = templates.source(
                    template, fix=BATCH_FIX, keys=("launchTemplateId", "launchTemplateName", "version")
                )
            else:
                image_types = [str(config.get("imageType", "")) for config in resources.get("ec2Configuration") or []]
                source = batch_default_source([kind for kind in image_types if kind])
        except AwsError as error:
            _fail(outcome, name, error, BATCH_COMPUTE_ENVIRONMENT)
            continue
        _add(outcome, launch_door_decision(door, source, settings))
    return outcome


def sweep_eks_nodegroups(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    """Every managed node group of every cluster (None), or the named ones as "cluster/nodegroup"."""
    outcome = SourceOutcome()
    pairs: list[tuple[str, str]] = []
    if names is None:
        try:
            for cluster in list(eks.cluster_names()):
                pairs.extend((cluster, nodegroup) for nodegroup in eks.nodegroup_names(cluster))
        except AwsError as error:
            _fail(outcome, ALL_RESOURCES, error, EKS_NODEGROUP)
            return outcome
    else:
        pairs = [(name.split("/", 1)[0], name.split("/", 1)[1]) for name in dict.fromkeys(names) if "/" in name]
    templates = _Templates()
    for cluster, nodegroup in pairs:
        resource_id = f"{cluster}/{nodegroup}"
        try:
            item = eks.describe_nodegroup(cluster, nodegroup)
            if item is None or item.get("status") in EKS_GONE:
                continue
            source = _nodegroup_source(item, templates)
        except AwsError as error:
            _fail(outcome, resource_id, error, EKS_NODEGROUP)
            continue
        door = LaunchDoor(
            resource_type=EKS_NODEGROUP,
            resource_id=resource_id,
            title=f"EKS managed node group {nodegroup} (cluster {cluster})",
            tags=tag_map(item.get("tags")),
            details={"cluster": cluster, "nodegroup": nodegroup, "arn": str(item.get("nodegroupArn", ""))},
        )
        _add(outcome, launch_door_decision(door, source, settings))
    return outcome


def _nodegroup_source(item: Mapping[str, Any], templates: _Templates) -> LaunchSource:
    template = item.get("launchTemplate")
    if template:
        return templates.source(template, fix=EKS_FIX, keys=("id", "name", "version"))
    # No template of the owner's: EKS generated one; its Auto Scaling group says which.
    groups = [str(group.get("name", "")) for group in (item.get("resources") or {}).get("autoScalingGroups") or []]
    for group in launch_paths.auto_scaling_groups(groups) if groups else []:
        source = _group_source(group, templates, fix=EKS_DEFAULT_FIX, owner="the launch template EKS generates,")
        if source is not None:
            return source
    return eks_generated_source(groups[0] if groups else "")


def sweep_ecs_capacity_providers(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    outcome = SourceOutcome()
    try:
        providers = ecs.capacity_providers(None if names is None else list(dict.fromkeys(names)))
    except AwsError as error:
        for resource_id in [ALL_RESOURCES] if names is None else list(dict.fromkeys(names)):
            _fail(outcome, resource_id, error, ECS_CAPACITY_PROVIDER)
        return outcome
    templates = _Templates()
    for item in providers:
        name = str(item.get("name", ""))
        provider = item.get("autoScalingGroupProvider")
        # Fargate (and ECS Managed Instances) providers have no Auto Scaling group of the account's.
        if not provider or item.get("status") == "INACTIVE":
            continue
        group_arn = str(provider.get("autoScalingGroupArn", ""))
        group_name = group_arn.split("autoScalingGroupName/", 1)[-1]
        try:
            groups = launch_paths.auto_scaling_groups([group_name])
            source = _group_source(groups[0], templates, fix=ECS_FIX, owner="launch template") if groups else None
        except AwsError as error:
            _fail(outcome, name, error, ECS_CAPACITY_PROVIDER)
            continue
        if source is None:
            logger.info(
                "capacity provider without a group or launch source", extra={"provider": name, "group": group_name}
            )
            continue
        door = LaunchDoor(
            resource_type=ECS_CAPACITY_PROVIDER,
            resource_id=name,
            title=f"ECS capacity provider {name} (Auto Scaling group {group_name})",
            tags=tag_map(item.get("tags")),
            details={"auto_scaling_group": group_name, "arn": str(item.get("capacityProviderArn", ""))},
        )
        _add(outcome, launch_door_decision(door, source, settings))
    return outcome


def sweep_emr_clusters(settings: Settings, *, names: Sequence[str] | None = None) -> SourceOutcome:
    """The live clusters (None) or the named cluster ids."""
    outcome = SourceOutcome()
    if names is None:
        try:
            names = list(emr.live_cluster_ids())
        except AwsError as error:
            _fail(outcome, ALL_RESOURCES, error, EMR_CLUSTER)
            return outcome
    configurations: dict[str, str] = {}
    for cluster_id in dict.fromkeys(names):
        try:
            cluster = emr.describe_cluster(cluster_id)
            state = str((cluster.get("Status") or {}).get("State", ""))
            if state not in EMR_LIVE_STATES:
                continue
            configuration = cluster.get("SecurityConfiguration")
            if configuration and configuration not in configurations:
                configurations[configuration] = emr.security_configuration(configuration)
        except AwsError as error:
            _fail(outcome, cluster_id, error, EMR_CLUSTER)
            continue
        door = LaunchDoor(
            resource_type=EMR_CLUSTER,
            resource_id=cluster_id,
            title=f"EMR cluster {cluster.get('Name', '')} ({cluster_id})",
            tags=tag_map(cluster.get("Tags")),
            details={
                "name": str(cluster.get("Name", "")),
                "release_label": str(cluster.get("ReleaseLabel", "")),
                "state": state,
            },
        )
        source = emr_source(configuration, configurations.get(configuration or ""))
        _add(outcome, launch_door_decision(door, source, settings))
    return outcome


# The gate's sweep (after the launch sources) and the CLI audit, in this order.
DOOR_CHECKS: tuple[tuple[str, Callable[[Settings], SourceOutcome]], ...] = (
    ("SageMaker notebook instances", sweep_sagemaker_notebooks),
    ("Lightsail instances", sweep_lightsail_instances),
    ("Elastic Beanstalk environments", sweep_beanstalk_environments),
    ("Batch compute environments", sweep_batch_compute_environments),
    ("EKS managed node groups", sweep_eks_nodegroups),
    ("ECS capacity providers", sweep_ecs_capacity_providers),
    ("EMR clusters", sweep_emr_clusters),
)
# The launch watch: one check by resource type, with the names its CloudTrail event gives.
DOOR_SWEEPS: dict[str, Callable[..., SourceOutcome]] = {
    SAGEMAKER_NOTEBOOK: sweep_sagemaker_notebooks,
    LIGHTSAIL_INSTANCE: sweep_lightsail_instances,
    BEANSTALK_ENVIRONMENT: sweep_beanstalk_environments,
    BATCH_COMPUTE_ENVIRONMENT: sweep_batch_compute_environments,
    EKS_NODEGROUP: sweep_eks_nodegroups,
    ECS_CAPACITY_PROVIDER: sweep_ecs_capacity_providers,
    EMR_CLUSTER: sweep_emr_clusters,
}

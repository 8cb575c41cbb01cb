"""A realistic fleet seeded into the emulator with real boto3 calls, plus the 14 days of `MetadataNoToken` history
the usage gate reads. The returned dataclasses name every instance by its role, so the demo, the tests and the
benchmarks can assert on the right one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3

from emulator import ACCOUNT, REGION

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef
    from mypy_boto3_ec2.literals import HttpTokensStateType, InstanceMetadataEndpointStateType, InstanceTypeType

IMAGE_ID = "ami-12c6146b"  # an AMI moto ships with
EXEMPT_TAG_KEY = "imdsv2-exempt"
METRIC_NAMESPACE = "AWS/EC2"
METRIC_NAME = "MetadataNoToken"
# EC2 publishes CPUUtilization for every running instance (every 5 minutes); the gate reads it as "it ran that day".
# Seeded every 6 hours: the gate only asks whether a day has any datapoint.
REFERENCE_METRIC = "CPUUtilization"
REFERENCE_EVERY_HOURS = 6
# PutMetricData takes at most 1000 datums per call.
PUT_METRIC_LIMIT = 1000


@dataclass(frozen=True)
class Fleet:
    """Instance ids by role. Every id is also in `roles` (id -> role label) for printing."""

    web: tuple[str, ...]  # optional, quiet: zero IMDSv1 calls on every day
    imdsv1_user: str  # optional, still calls IMDSv1 (the gate must block it)
    gappy: str  # optional, metrics missing on some days (the gate must report insufficient data)
    required: tuple[str, ...]  # already IMDSv2-only
    exempt: str  # optional with the exemption tag
    eks_host: str  # optional container host with hop limit 1 (needs 2 under IMDSv2)
    ecs_host: str  # optional container host
    stopped: str  # optional, stopped
    endpoint_disabled: str  # optional tokens, but the metadata endpoint is off
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def optional(self) -> tuple[str, ...]:
        """Every instance that accepts IMDSv1 (HttpTokens=optional), exempt ones included."""
        return (
            *self.web,
            self.imdsv1_user,
            self.gappy,
            self.exempt,
            self.eks_host,
            self.ecs_host,
            self.stopped,
            self.endpoint_disabled,
        )

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.optional, *self.required)


def _launch(
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    tokens: HttpTokensStateType = "optional",
    hop_limit: int = 1,
    endpoint: InstanceMetadataEndpointStateType = "enabled",
    instance_type: InstanceTypeType = "t3.micro",
) -> str:
    ec2 = boto3.client("ec2")
    all_tags = {"Name": name, **(tags or {})}
    response = ec2.run_instances(
        ImageId=IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        MetadataOptions={"HttpTokens": tokens, "HttpPutResponseHopLimit": hop_limit, "HttpEndpoint": endpoint},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": key, "Value": value} for key, value in all_tags.items()]}
        ],
    )
    return response["Instances"][0]["InstanceId"]


def seed_fleet(
    *,
    prefix: str = "",
    web_count: int = 4,
    metric_days: int = 14,
    backdate_days: int | None = None,
    now: datetime | None = None,
) -> Fleet:
    """Launch the fleet (one instance per reservation, as real launches by different teams would be) and seed its
    `MetadataNoToken` history. ``backdate_days`` moves the launch times back (same process as the server only)."""
    now = now or datetime.now(UTC)
    roles: dict[str, str] = {}

    def launch(role: str, name: str, **kwargs: Any) -> str:
        instance_id = _launch(prefix + name, **kwargs)
        roles[instance_id] = role
        return instance_id

    web_tags = {"team": "storefront", "env": "prod"}
    web = tuple(launch("web", f"web-{index + 1:02d}", tags=web_tags) for index in range(web_count))
    imdsv1_user = launch(
        "imdsv1-user", "legacy-reporting", tags={"team": "finance", "env": "prod"}, instance_type="m5.large"
    )
    gappy = launch("metrics-gaps", "batch-worker", tags={"team": "data", "env": "staging"})
    required = (
        launch("required", "api-01", tokens="required", hop_limit=2, tags={"team": "platform", "env": "prod"}),
        launch("required", "api-02", tokens="required", hop_limit=2, tags={"team": "platform", "env": "prod"}),
    )
    exempt = launch(
        "exempt",
        "vendor-appliance",
        tags={"team": "network", "env": "prod", EXEMPT_TAG_KEY: "vendor AMI needs IMDSv1 until v9 (CHG-2291)"},
    )
    eks_host = launch(
        "eks-host",
        "eks-node-a",
        tags={"team": "platform", "env": "prod", "eks:cluster-name": "prod", "kubernetes.io/cluster/prod": "owned"},
        instance_type="m5.xlarge",
    )
    ecs_host = launch(
        "ecs-host", "ecs-node-a", tags={"team": "platform", "env": "prod", "AmazonECSManaged": ""}, hop_limit=1
    )
    stopped = launch("stopped", "build-agent", tags={"team": "ci", "env": "dev"})
    boto3.client("ec2").stop_instances(InstanceIds=[stopped])
    endpoint_disabled = launch("endpoint-off", "bastion", endpoint="disabled", tags={"team": "security", "env": "prod"})

    fleet = Fleet(
        web=web,
        imdsv1_user=imdsv1_user,
        gappy=gappy,
        required=required,
        exempt=exempt,
        eks_host=eks_host,
        ecs_host=ecs_host,
        stopped=stopped,
        endpoint_disabled=endpoint_disabled,
        roles=roles,
    )
    quiet = [instance_id for instance_id in fleet.all if instance_id not in (imdsv1_user, gappy)]
    seed_usage(quiet, days=metric_days, now=now)
    seed_usage([imdsv1_user], days=metric_days, now=now, calls={3 * 24 + 5: 12.0})
    seed_usage([gappy], days=metric_days, now=now, missing_days=range(4, 9))
    if backdate_days is not None:
        backdate_launch(fleet.all, backdate_days)
    return fleet


@dataclass(frozen=True)
class GateCandidates:
    """A fresh set of optional instances for the usage gate, each with a known verdict."""

    quiet: tuple[str, ...]  # zero IMDSv1 calls over the whole window: enforce
    container_host: str  # quiet EKS node at hop limit 1: enforce, keeping hop limit 1
    noisy_node: str  # EKS node whose pods call IMDSv1 at hop limit 1: prepare (hop limit 2, tokens optional)
    weekday_only: str  # runs Monday to Friday, started this morning, quiet: enforce (weekends are not gaps)
    imdsv1_user: str  # IMDSv1 calls in the window: block
    gappy: str  # days without data: insufficient data
    exempt: str  # exemption tag: never touched
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def all(self) -> tuple[str, ...]:
        return (
            *self.quiet,
            self.container_host,
            self.noisy_node,
            self.weekday_only,
            self.imdsv1_user,
            self.gappy,
            self.exempt,
        )


def seed_gate_candidates(
    *, prefix: str = "old-", quiet_count: int = 3, metric_days: int = 15, launched_days_ago: int = 30
) -> GateCandidates:
    """Optional instances that launched before the look-back window, with `metric_days` of history (one more day
    than the gate's default 14-day window, so the window is covered however the gate aligns its periods)."""
    now = datetime.now(UTC)
    roles: dict[str, str] = {}

    def launch(role: str, name: str, **kwargs: Any) -> str:
        instance_id = _launch(prefix + name, **kwargs)
        roles[instance_id] = role
        return instance_id

    tags = {"team": "intranet", "env": "prod"}
    quiet = tuple(launch("quiet", f"intranet-{index + 1:02d}", tags=tags) for index in range(quiet_count))
    node_tags = {**tags, "eks:cluster-name": "intranet", "kubernetes.io/cluster/intranet": "owned"}
    container_host = launch("eks-host", "eks-node-b", tags=node_tags)
    noisy_node = launch("eks-host, pods on IMDSv1", "eks-node-c", tags=node_tags)
    weekday_only = launch("weekdays only", "office-vdi", tags={"team": "it", "env": "prod"})
    imdsv1_user = launch("imdsv1-user", "wiki-legacy", tags=tags)
    gappy = launch("metrics-gaps", "cron-box", tags=tags)
    exempt = launch("exempt", "license-server", tags={**tags, EXEMPT_TAG_KEY: "licence check reads IMDSv1"})
    candidates = GateCandidates(
        quiet=quiet,
        container_host=container_host,
        noisy_node=noisy_node,
        weekday_only=weekday_only,
        imdsv1_user=imdsv1_user,
        gappy=gappy,
        exempt=exempt,
        roles=roles,
    )
    seed_usage([*quiet, container_host, exempt], days=metric_days, now=now)
    seed_usage([noisy_node], days=metric_days, now=now, calls={5 * 24 + 2: 18.0, 26: 7.0})
    # Off on Saturdays and Sundays: no metrics at all on those days (it did not run), started again this morning.
    weekend = [day for day in range(metric_days) if (now - timedelta(days=day)).weekday() >= 5]
    seed_usage([weekday_only], days=metric_days, now=now, stopped_days=weekend)
    seed_usage(
        [imdsv1_user],
        days=metric_days,
        now=now,
        calls={2 * 24 + 3: 4.0, 9 * 24 + 14: 31.0},
    )
    seed_usage([gappy], days=metric_days, now=now, missing_days=range(2, 8))
    backdate_launch([c for c in candidates.all if c != weekday_only], launched_days_ago)
    backdate_launch([weekday_only], launched_days_ago, last_start_days=0.1)
    return candidates


@dataclass(frozen=True)
class NewLaunches:
    """Instances launched just now (no history): what the launch watch may enforce blind in fix mode."""

    web: tuple[str, ...]
    node: str  # a new EKS node (by its tags): enforced with hop limit 2, so its pods can get tokens
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.web, self.node)


def seed_new_launches(*, prefix: str = "new-") -> NewLaunches:
    roles: dict[str, str] = {}

    def launch(role: str, name: str, **kwargs: Any) -> str:
        instance_id = _launch(prefix + name, **kwargs)
        roles[instance_id] = role
        return instance_id

    web = tuple(launch("new web", f"web-{index + 1:02d}", tags={"team": "storefront"}) for index in range(2))
    node = launch(
        "new eks node", "eks-node-z", tags={"eks:cluster-name": "prod", "kubernetes.io/cluster/prod": "owned"}
    )
    return NewLaunches(web=web, node=node, roles=roles)


def create_ledger_table(name: str) -> str:
    """The stack's state table as the stack creates it (partition key `pk`; the sparse `pending` index of open switch
    records), for the launch watch's ledger and every switch's record."""
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "pending", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            {
                "IndexName": "pending",
                "KeySchema": [
                    {"AttributeName": "pending", "KeyType": "HASH"},
                    {"AttributeName": "pk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    return name


def seed_usage(
    instance_ids: Iterable[str],
    *,
    days: int = 14,
    now: datetime | None = None,
    calls: Mapping[int, float] | None = None,
    missing_days: Iterable[int] = (),
    stopped_days: Iterable[int] = (),
) -> int:
    """What EC2 would have published for the last ``days`` days: hourly `AWS/EC2 MetadataNoToken` datapoints, zero
    except ``calls`` (hours ago -> IMDSv1 calls in that hour), and the `CPUUtilization` reference of a running
    instance. On the ``missing_days`` (days ago, 0 = today) the instance ran but MetadataNoToken has no datapoint
    (missing evidence, not zero); on the ``stopped_days`` it did not run, so neither metric has one. Returns the number
    of datapoints written."""
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    missing = set(missing_days)
    stopped = set(stopped_days)
    datums: list[MetricDatumTypeDef] = []
    for instance_id in instance_ids:
        dimensions = [{"Name": "InstanceId", "Value": instance_id}]
        for hours_ago in range(days * 24):
            timestamp = end - timedelta(hours=hours_ago)
            day = hours_ago // 24
            if day in stopped:
                continue
            if hours_ago % REFERENCE_EVERY_HOURS == 0:
                datums.append(
                    {
                        "MetricName": REFERENCE_METRIC,
                        "Dimensions": dimensions,  # type: ignore[typeddict-item]
                        "Timestamp": timestamp,
                        "Value": 7.5,
                        "Unit": "Percent",
                    }
                )
            if day in missing:
                continue
            datums.append(
                {
                    "MetricName": METRIC_NAME,
                    "Dimensions": dimensions,  # type: ignore[typeddict-item]
                    "Timestamp": timestamp,
                    "Value": (calls or {}).get(hours_ago, 0.0),
                    "Unit": "Count",
                }
            )
    cloudwatch = boto3.client("cloudwatch")
    for start in range(0, len(datums), PUT_METRIC_LIMIT):
        cloudwatch.put_metric_data(Namespace=METRIC_NAMESPACE, MetricData=datums[start : start + PUT_METRIC_LIMIT])
    return len(datums)


def put_rejections(instance_id: str, calls: float, *, at: datetime | None = None) -> None:
    """`AWS/EC2 MetadataNoTokenRejected` for one instance: `calls` IMDSv1 calls refused at `at` (default: now)."""
    boto3.client("cloudwatch").put_metric_data(
        Namespace=METRIC_NAMESPACE,
        MetricData=[
            {
                "MetricName": "MetadataNoTokenRejected",
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Timestamp": at or datetime.now(UTC),
                "Value": calls,
                "Unit": "Count",
            }
        ],
    )


def backdate_launch(
    instance_ids: Sequence[str],
    days: float,
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    last_start_days: float | None = None,
) -> None:
    """Move the instances' first launch ``days`` back, as if they had run that long: the attach time of their
    network interfaces and root volume (which EC2 keeps from the first launch) and their LaunchTime (the last start,
    moved to ``last_start_days`` ago when given: a restart since).

    moto stamps these at RunInstances and the API cannot change them, so this edits moto's in-memory model (naive
    UTC datetimes): it works only in the process that runs the moto server or `mock_aws`.
    """
    from moto.backends import get_backend

    backend = get_backend("ec2")[account][region]
    for instance_id in instance_ids:
        instance = backend.get_instance(instance_id)
        first = instance.launch_time - timedelta(days=days)
        for nic in instance.nics.values():
            nic.attach_time = first
        for device in instance.block_device_mapping.values():
            device.attach_time = first
        now = instance.launch_time
        instance.launch_time = first if last_start_days is None else now - timedelta(days=last_start_days)


@dataclass(frozen=True)
class LaunchSources:
    """Where new instances come from, each with a known verdict for the launch-source checks."""

    open_template: str  # default version accepts IMDSv1, used by a group at $Default: fixable (new default version)
    required_template: str  # already requires IMDSv2: no finding
    eks_template: str  # accepts IMDSv1 but EKS-managed (tag eks:nodegroup-name): flagged, never changed
    launch_configuration: str  # name; HttpTokens optional, used by a group: flagged (cannot be changed)
    image: str  # own AMI without ImdsSupport: fixable (ImdsSupport v2.0)
    groups: Mapping[str, str] = field(default_factory=dict)  # Auto Scaling group -> the source it launches from
    roles: Mapping[str, str] = field(default_factory=dict)  # source id (or launch configuration name) -> role

    @property
    def templates(self) -> tuple[str, ...]:
        return (self.open_template, self.required_template, self.eks_template)


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _create_template(name: str, tokens: HttpTokensStateType, *, tags: Mapping[str, str] | None = None) -> str:
    kwargs: dict[str, Any] = {
        "LaunchTemplateName": name,
        "LaunchTemplateData": {
            "ImageId": IMAGE_ID,
            "InstanceType": "t3.micro",
            "MetadataOptions": {"HttpTokens": tokens, "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
        },
    }
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "launch-template", "Tags": _tag_list(tags)}]
    template_id: str = boto3.client("ec2").create_launch_template(**kwargs)["LaunchTemplate"]["LaunchTemplateId"]
    return template_id


def _create_group(name: str, **source: Any) -> None:
    """An empty group (desired 0: it launches nothing), only so the checks can name who uses a source."""
    subnet = boto3.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=0, MaxSize=4, DesiredCapacity=0, VPCZoneIdentifier=subnet, **source
    )


def seed_launch_sources(*, prefix: str = "") -> LaunchSources:
    """Launch templates, a launch configuration, Auto Scaling groups and an own AMI, with real boto3 calls."""
    ec2 = boto3.client("ec2")
    roles: dict[str, str] = {}
    groups: dict[str, str] = {}

    open_template = _create_template(prefix + "storefront-web", "optional", tags={"team": "storefront"})
    roles[open_template] = "open, used by a group"
    _create_group(
        prefix + "storefront-web-asg",
        LaunchTemplate={"LaunchTemplateId": open_template, "Version": "$Default"},
    )
    groups[prefix + "storefront-web-asg"] = open_template

    required_template = _create_template(prefix + "platform-api", "required", tags={"team": "platform"})
    roles[required_template] = "already required"

    eks_template = _create_template(
        prefix + "eks-prod-workers", "optional", tags={"eks:nodegroup-name": "prod-workers"}
    )
    roles[eks_template] = "EKS-managed, open"

    launch_configuration = prefix + "legacy-batch-lc"
    boto3.client("autoscaling").create_launch_configuration(
        LaunchConfigurationName=launch_configuration,
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
    )
    roles[launch_configuration] = "open, used by a group"
    _create_group(prefix + "legacy-batch-asg", LaunchConfigurationName=launch_configuration)
    groups[prefix + "legacy-batch-asg"] = launch_configuration

    # An own AMI baked from a builder instance, which is then terminated (as an image pipeline would).
    builder = _launch(prefix + "ami-builder", tokens="required", tags={"team": "platform"})
    image: str = ec2.create_image(InstanceId=builder, Name=prefix + "golden-al2023-2026.11")["ImageId"]
    ec2.terminate_instances(InstanceIds=[builder])
    roles[image] = "own, baked from an instance"

    return LaunchSources(
        open_template=open_template,
        required_template=required_template,
        eks_template=eks_template,
        launch_configuration=launch_configuration,
        image=image,
        groups=groups,
        roles=roles,
    )

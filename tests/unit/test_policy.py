"""The launch watch's decision as a pure function: property tests over instances, tags and settings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import (
    CONTAINER_HOP_LIMIT,
    ModifyPlan,
    is_container_host,
    launch_decision,
    modify_plan,
)
from imds_enforcer.domain.report import Action, Finding
from imds_enforcer.domain.settings import EnforcementMode, Settings

TAG_KEYS = st.sampled_from(
    [
        "Name",
        "team",
        "imdsv2-exempt",
        "legacy-ok",
        "eks:cluster-name",
        "aws:eks:cluster-name",
        "kubernetes.io/cluster/prod",
        "AmazonECSManaged",
        "nomad-client",
        "env",
    ]
)
instances = st.builds(
    InstanceFacts,
    instance_id=st.from_regex(r"i-[0-9a-f]{17}", fullmatch=True),
    state=st.sampled_from(["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]),
    http_tokens=st.sampled_from(["optional", "required"]),
    hop_limit=st.integers(min_value=1, max_value=64),
    http_endpoint=st.sampled_from(["enabled", "disabled"]),
    tags=st.dictionaries(TAG_KEYS, st.text(max_size=8), max_size=5),
)
settings = st.builds(
    Settings,
    ENFORCEMENT_MODE=st.sampled_from(list(EnforcementMode)),
    EXEMPT_TAG_KEY=st.sampled_from(["imdsv2-exempt", "legacy-ok"]),
    CONTAINER_HOST_TAG_KEYS=st.sampled_from([(), ("nomad-client",)]),
)


@given(instances, settings)
def test_never_touches_required_gone_or_pending_instances(instance: InstanceFacts, config: Settings) -> None:
    decision = launch_decision(instance, config)
    if instance.http_tokens == "required" or instance.state in ("pending", "shutting-down", "terminated"):
        assert decision is None


@given(instances, settings)
def test_never_enforces_exempt(instance: InstanceFacts, config: Settings) -> None:
    decision = launch_decision(instance, config)
    if config.EXEMPT_TAG_KEY in instance.tags:
        assert not isinstance(decision, ModifyPlan)
        if decision is not None:
            assert decision.action is Action.EXEMPT


@given(instances, settings)
def test_flag_mode_never_modifies(instance: InstanceFacts, config: Settings) -> None:
    if config.ENFORCEMENT_MODE is EnforcementMode.FLAG:
        assert not isinstance(launch_decision(instance, config), ModifyPlan)


@given(instances, settings)
def test_fix_mode_enforces_every_live_optional_unexempt_instance(instance: InstanceFacts, config: Settings) -> None:
    decision = launch_decision(instance, config)
    live_optional = instance.http_tokens == "optional" and instance.state in ("running", "stopping", "stopped")
    if config.fix and live_optional and config.EXEMPT_TAG_KEY not in instance.tags:
        assert isinstance(decision, ModifyPlan)
    elif live_optional and config.EXEMPT_TAG_KEY not in instance.tags:
        assert isinstance(decision, Finding)
        assert decision.action is Action.FLAGGED


@given(instances, settings)
def test_hop_limit_is_never_lowered_and_container_hosts_get_two(instance: InstanceFacts, config: Settings) -> None:
    plan = modify_plan(instance, config)
    if plan.hop_limit is not None:
        assert plan.hop_limit > instance.hop_limit
    effective = plan.hop_limit if plan.hop_limit is not None else instance.hop_limit
    if is_container_host(instance.tags, config.CONTAINER_HOST_TAG_KEYS):
        assert effective >= CONTAINER_HOP_LIMIT
    else:
        assert effective == instance.hop_limit


def test_container_host_tags() -> None:
    assert is_container_host({"kubernetes.io/cluster/prod": "owned"})
    assert is_container_host({"aws:eks:cluster-name": "prod"})
    assert is_container_host({"AmazonECSManaged": ""})
    assert is_container_host({"nomad-client": "1"}, extra_keys=("nomad-client",))
    assert not is_container_host({"nomad-client": "1"})
    assert not is_container_host({"Name": "kubernetes.io/cluster/prod"})

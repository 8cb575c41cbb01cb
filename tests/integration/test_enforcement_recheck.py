"""The paced modifies on moto: each batch re-checked on the live instances just before its modifies."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from imds_enforcer.aws import clients
from imds_enforcer.domain.instances import InstanceFacts
from imds_enforcer.domain.policy import ModifyPlan
from imds_enforcer.workflows.enforcement import RECHECK_BATCH, enforce
from imds_enforcer.workflows.pacing import Pacer
from tests.support.aws import launch, metadata_options
from tests.support.faults import Fault, count_calls, ec2_error, inject

pytestmark = pytest.mark.usefixtures("aws")


def plans_for(ids: list[str]) -> list[ModifyPlan]:
    items = boto3.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    facts = {item["InstanceId"]: InstanceFacts.from_api(item) for r in items for item in r["Instances"]}
    return [ModifyPlan(instance=facts[i], hop_limit=None, why="quiet", exempt_tag_key="imdsv2-exempt") for i in ids]


def fast_pacer() -> Pacer:
    return Pacer(burst=1000, rate_per_second=100)


class TagOnFirstModify:
    """Someone tags an instance exempt while the run is modifying the first batch."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.done = False

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        if not self.done:
            self.done = True
            boto3.client("ec2").create_tags(
                Resources=[self.instance_id], Tags=[{"Key": "imdsv2-exempt", "Value": "change freeze"}]
            )


def test_an_exemption_tagged_mid_run_holds_for_the_later_batches() -> None:
    # Given plans for two batches of instances, read just now (the launch watch's case: the first batch is not
    # read again), and someone who tags an instance of the second batch exempt during the first batch's modifies
    ids = launch(count=RECHECK_BATCH + 5)
    late = ids[RECHECK_BATCH + 2]
    clients.ec2().meta.events.register(
        "provide-client-params.ec2.ModifyInstanceMetadataOptions", TagOnFirstModify(late)
    )
    calls = count_calls(clients.ec2())

    # When they are enforced
    outcome = enforce(plans_for(ids), enforced_by="launch_watch", pacer=fast_pacer())

    # Then the second batch was read again before its modifies, and the exempt instance was left alone and reported
    assert calls.counts["DescribeInstances"] == 1
    assert metadata_options(late)["HttpTokens"] == "optional"
    assert late not in outcome.enforced
    assert len(outcome.enforced) == len(ids) - 1
    (exempt,) = [finding for finding in outcome.findings if finding.action == "exempt"]
    assert exempt.resource_id == late
    assert "change freeze" in exempt.reason


def test_plans_from_older_facts_are_read_again_from_the_first_batch() -> None:
    # Given plans made earlier, and since then one instance required by someone else and one terminated
    ids = launch(count=4)
    plans = plans_for(ids)
    boto3.client("ec2").modify_instance_metadata_options(InstanceId=ids[0], HttpTokens="required")
    boto3.client("ec2").terminate_instances(InstanceIds=[ids[1]])
    modifies = count_calls(clients.ec2_paced())

    # When the gate enforces them (adaptive, facts not fresh)
    outcome = enforce(plans, enforced_by="usage_gate", pacer=fast_pacer(), adaptive=True, facts_read_now=False)

    # Then only the two still optional are modified; the others are accounted for, not reported
    assert modifies.counts["ModifyInstanceMetadataOptions"] == 2
    assert sorted(outcome.enforced) == sorted(ids[2:])
    assert outcome.already_done == [ids[0]]
    assert outcome.gone == [ids[1]]
    assert {finding.resource_id for finding in outcome.findings} == set(ids[2:])


@pytest.mark.parametrize(
    ("code", "status", "raised"),
    [
        ("InternalError", 500, True),  # a retry can fix it: raised after the report
        ("UnauthorizedOperation", 403, False),  # a policy's refusal: a retry would be refused the same way
    ],
)
def test_instances_that_cannot_be_read_again_are_not_changed_blind(code: str, status: int, raised: bool) -> None:
    # Given plans from older facts, and DescribeInstances failing
    ids = launch(count=3)
    plans = plans_for(ids)
    inject(clients.ec2(), "DescribeInstances", Fault(ec2_error(code, "injected", status=status)))

    # When the gate enforces them
    outcome = enforce(plans, enforced_by="usage_gate", pacer=fast_pacer(), adaptive=True, facts_read_now=False)

    # Then nothing is modified, each is reported failed naming the re-check, and only a retryable error is raised
    assert outcome.enforced == []
    assert all(metadata_options(i)["HttpTokens"] == "optional" for i in ids)
    assert sorted(f.resource_id for f in outcome.findings) == sorted(ids)
    assert all(f.error_code == code and "re-check" in f.reason for f in outcome.findings)
    assert bool(outcome.unexpected_errors) is raised


def test_an_unexpected_error_on_one_instance_never_stops_the_others() -> None:
    # Given one instance EC2 keeps failing (5xx through every retry), between two it modifies
    ids = launch(count=3)
    inject(
        clients.ec2_paced(),
        "ModifyInstanceMetadataOptions",
        Fault(ec2_error("InternalError", status=500), only_for=ids[1]),
    )
    outcome = enforce(plans_for(ids), enforced_by="usage_gate", pacer=fast_pacer(), adaptive=True)
    assert sorted(outcome.enforced) == sorted([ids[0], ids[2]])
    assert [f.error_code for f in outcome.findings if f.resource_id == ids[1]] == ["InternalError"]
    # (raised by the caller after its report is out: a retry can fix it)
    assert outcome.unexpected_errors == [f"ModifyInstanceMetadataOptions {ids[1]}: InternalError"]

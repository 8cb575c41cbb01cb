"""The Lightsail adapter against the real service model (botocore's Stubber checks every request and response
against Lightsail's API shapes): moto has no Lightsail, so this is the proof that the calls are the real ones."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from imds_enforcer.aws import clients, lightsail
from imds_enforcer.aws.errors import AwsError
from imds_enforcer.domain.report import Action
from imds_enforcer.domain.settings import EnforcementMode, Settings
from imds_enforcer.workflows import door_sweep


def _instance(name: str, tokens: str = "optional", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "arn": f"arn:aws:lightsail:us-east-1:123456789012:Instance/{name}-0c2a",
        "createdAt": datetime(2026, 1, 5, tzinfo=UTC),
        "blueprintId": "wordpress",
        "state": {"code": 16, "name": "running"},
        "tags": extra.get("tags", []),
        "metadataOptions": {
            "state": "applied",
            "httpTokens": tokens,
            "httpEndpoint": "enabled",
            "httpPutResponseHopLimit": 1,
            "httpProtocolIpv6": "disabled",
        },
    }


def _operation(name: str) -> dict[str, Any]:
    return {
        "id": "6f3b6c7e-5b7a-4a46-9a7b-1f1f5f0a0d11",
        "resourceName": name,
        "resourceType": "Instance",
        "operationType": "UpdateInstanceMetadataOptions",
        "status": "Started",
        "isTerminal": False,
    }


@pytest.fixture
def stub() -> Iterator[Stubber]:
    with Stubber(clients.lightsail()) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def test_requiring_imdsv2_sends_http_tokens_explicitly_and_nothing_else(stub: Stubber) -> None:
    # Lightsail resets an omitted httpTokens to optional: the call must name it; the hop limit and endpoint are
    # left out, so they keep their values.
    stub.add_response(
        "update_instance_metadata_options",
        {"operation": _operation("blog-1")},
        expected_params={"instanceName": "blog-1", "httpTokens": "required"},
    )

    assert lightsail.require_tokens("blog-1") == "Started"


def test_the_listing_follows_page_tokens(stub: Stubber) -> None:
    stub.add_response("get_instances", {"instances": [_instance("a")], "nextPageToken": "p2"}, expected_params={})
    stub.add_response("get_instances", {"instances": [_instance("b")]}, expected_params={"pageToken": "p2"})

    assert [item["name"] for item in lightsail.iter_instances()] == ["a", "b"]


def test_an_unknown_instance_is_none_and_other_errors_are_aws_errors(stub: Stubber) -> None:
    stub.add_client_error(
        "get_instance", "NotFoundException", "The Instance does not exist", 400, {"instanceName": "x"}
    )
    stub.add_client_error(
        "update_instance_metadata_options",
        "InvalidInputException",
        "IMDSv2 is not supported for this blueprint",
        400,
        {"instanceName": "old", "httpTokens": "required"},
    )

    assert lightsail.get_instance("x") is None
    with pytest.raises(AwsError) as raised:
        lightsail.require_tokens("old")
    assert (raised.value.operation, raised.value.code) == ("UpdateInstanceMetadataOptions", "InvalidInputException")


def test_the_sweep_fixes_on_opt_in_and_reports_a_refusal_on_its_instance(stub: Stubber) -> None:
    stub.add_response(
        "get_instances",
        {
            "instances": [
                _instance("blog-1"),
                _instance("legacy"),
                _instance("done", tokens="required"),
                _instance("kept", tags=[{"key": "imdsv2-exempt", "value": "plugin"}]),
            ]
        },
        expected_params={},
    )
    stub.add_response(
        "update_instance_metadata_options",
        {"operation": _operation("blog-1")},
        expected_params={"instanceName": "blog-1", "httpTokens": "required"},
    )
    stub.add_client_error(
        "update_instance_metadata_options",
        "InvalidInputException",
        "IMDSv2 is not supported for this blueprint",
        400,
        {"instanceName": "legacy", "httpTokens": "required"},
    )

    outcome = door_sweep.sweep_lightsail_instances(
        Settings(ENFORCEMENT_MODE=EnforcementMode.FIX, FIX_LIGHTSAIL_INSTANCES=True)
    )

    found = {finding.resource_id: finding for finding in outcome.findings}
    assert found["blog-1"].action is Action.ENFORCED
    assert found["blog-1"].details["operation_status"] == "Started"
    assert (found["legacy"].action, found["legacy"].error_code) == (Action.FAILED, "InvalidInputException")
    assert found["kept"].action is Action.EXEMPT
    assert "done" not in found
    assert outcome.unexpected_errors == []  # Lightsail's refusal describes the instance, not a fault of ours


@pytest.mark.parametrize(
    ("region", "endpoint", "available"),
    [("us-east-1", None, True), ("af-south-1", None, False), ("af-south-1", "http://127.0.0.1:5000", True)],
)
def test_lightsail_is_checked_only_where_it_exists(
    monkeypatch: pytest.MonkeyPatch, region: str, endpoint: str | None, available: bool
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_REGION", region)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    clients.reset_clients()

    assert lightsail.available() is available
    if not available:
        # No call at all (its endpoint would not resolve there): an empty outcome.
        assert door_sweep.sweep_lightsail_instances(Settings()).findings == []

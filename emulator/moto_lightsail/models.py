"""The Lightsail model (its `urls` module is found by moto's naming rule: `<package>.models` -> `<package>.urls`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from moto.core.base_backend import BackendDict, BaseBackend
from moto.core.exceptions import ServiceException

PAGE_SIZE = 50
DEFAULT_METADATA_OPTIONS = {
    "state": "applied",
    "httpTokens": "optional",  # Lightsail: "By default, you can use either IMDSv1 or IMDSv2, or both."
    "httpEndpoint": "enabled",
    "httpPutResponseHopLimit": 1,
    "httpProtocolIpv6": "disabled",
}


class NotFoundException(ServiceException):
    code = "NotFoundException"


class InvalidInputException(ServiceException):
    code = "InvalidInputException"


class LightsailBackend(BaseBackend):
    def __init__(self, region_name: str, account_id: str) -> None:
        super().__init__(region_name, account_id)
        self.instances: dict[str, dict[str, Any]] = {}

    def _operation(self, name: str, operation_type: str) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "resourceName": name,
            "resourceType": "Instance",
            "createdAt": datetime.now(UTC),
            "location": {"availabilityZone": "all", "regionName": self.region_name},
            "isTerminal": False,
            "operationType": operation_type,
            "status": "Started",
        }

    def create_instances(
        self, names: list[str], zone: str, blueprint: str, bundle: str, tags: list[dict[str, str]]
    ) -> list[dict[str, Any]]:
        for name in names:
            if name in self.instances:
                raise InvalidInputException(f"Some names are already in use: {name}")
        operations = []
        for name in names:
            self.instances[name] = {
                "name": name,
                "arn": f"arn:aws:lightsail:{self.region_name}:{self.account_id}:Instance/{uuid.uuid4()}",
                "supportCode": f"{self.account_id}/i-{uuid.uuid4().hex[:17]}",
                "createdAt": datetime.now(UTC),
                "location": {"availabilityZone": zone, "regionName": self.region_name},
                "resourceType": "Instance",
                "tags": list(tags),
                "blueprintId": blueprint,
                "bundleId": bundle,
                "state": {"code": 16, "name": "running"},
                "metadataOptions": dict(DEFAULT_METADATA_OPTIONS),
            }
            operations.append(self._operation(name, "CreateInstance"))
        return operations

    def get_instance(self, name: str) -> dict[str, Any]:
        if name not in self.instances:
            raise NotFoundException(f"The Instance does not exist: {name}")
        return self.instances[name]

    def get_instances(self, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        names = sorted(self.instances)
        start = int(page_token) if page_token and page_token.isdigit() else 0
        page = [self.instances[name] for name in names[start : start + PAGE_SIZE]]
        following = start + PAGE_SIZE
        return page, (str(following) if following < len(names) else None)

    def update_instance_metadata_options(
        self,
        name: str,
        http_tokens: str | None,
        http_endpoint: str | None,
        hop_limit: int | None,
        ipv6: str | None,
    ) -> dict[str, Any]:
        options = self.get_instance(name)["metadataOptions"]
        # The API reference: "httpTokens - If the parameter is not specified in the request, the default state is
        # optional"; for the others, "the existing state is maintained".
        options["httpTokens"] = http_tokens or "optional"
        if http_endpoint is not None:
            options["httpEndpoint"] = http_endpoint
        if hop_limit is not None:
            options["httpPutResponseHopLimit"] = int(hop_limit)
        if ipv6 is not None:
            options["httpProtocolIpv6"] = ipv6
        options["state"] = "applied"  # real Lightsail goes through "pending"; nothing here waits for it
        return self._operation(name, "UpdateInstanceMetadataOptions")


lightsail_backends = BackendDict(LightsailBackend, "lightsail")

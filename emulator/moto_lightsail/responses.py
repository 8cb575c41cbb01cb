from __future__ import annotations

from moto.core.responses import ActionResult, BaseResponse

from emulator.moto_lightsail.models import LightsailBackend, lightsail_backends


class LightsailResponse(BaseResponse):
    def __init__(self) -> None:
        super().__init__(service_name="lightsail")

    @property
    def backend(self) -> LightsailBackend:
        return lightsail_backends[self.current_account][self.region]

    def create_instances(self) -> ActionResult:
        operations = self.backend.create_instances(
            names=self._get_param("instanceNames", []),
            zone=self._get_param("availabilityZone"),
            blueprint=self._get_param("blueprintId"),
            bundle=self._get_param("bundleId"),
            tags=self._get_param("tags", []),
        )
        return ActionResult({"operations": operations})

    def get_instance(self) -> ActionResult:
        return ActionResult({"instance": self.backend.get_instance(self._get_param("instanceName"))})

    def get_instances(self) -> ActionResult:
        instances, token = self.backend.get_instances(self._get_param("pageToken"))
        result: dict[str, object] = {"instances": instances}
        if token:
            result["nextPageToken"] = token
        return ActionResult(result)

    def update_instance_metadata_options(self) -> ActionResult:
        operation = self.backend.update_instance_metadata_options(
            name=self._get_param("instanceName"),
            http_tokens=self._get_param("httpTokens"),
            http_endpoint=self._get_param("httpEndpoint"),
            hop_limit=self._get_param("httpPutResponseHopLimit"),
            ipv6=self._get_param("httpProtocolIpv6"),
        )
        return ActionResult({"operation": operation})

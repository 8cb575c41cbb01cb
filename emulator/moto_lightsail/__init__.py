"""A small Lightsail backend for moto, which has none: instances and their metadata options, as the Lightsail API
reference documents them. Registered under moto's own name (`moto.lightsail`) by `emulator.moto_ext.teach_moto`,
so `mock_aws` and the moto server route Lightsail calls here like any other service's.

Only what the enforcer and the demo use: CreateInstances, GetInstances (paged), GetInstance,
UpdateInstanceMetadataOptions (with the documented rule that an omitted httpTokens resets to optional, while an
omitted hop limit or endpoint keeps its value). The product's adapter is also tested with botocore's Stubber against
the real service model, so this fake is never the only proof.
"""

from emulator.moto_lightsail.models import LightsailBackend, lightsail_backends

__all__ = ["LightsailBackend", "lightsail_backends"]

"""SSM Parameter Store adapter: the central exemption list's parameter."""

from __future__ import annotations

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import translated


def parameter_value(name: str) -> str:
    """The parameter's value (a String parameter; a SecureString is decrypted with the role's own rights)."""
    with translated("GetParameter"):
        return clients.ssm().get_parameter(Name=name, WithDecryption=True)["Parameter"].get("Value", "")

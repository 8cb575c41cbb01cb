#!/usr/bin/env python3
"""CDK app: read context -> validated DeployConfig -> one stack per region -> cdk-nag -> synth.

With ``-c deployment=organization`` (or in cdk.json) the same app synthesizes the organization's StackSet path
instead (``infra.organization``).

Run with the project's virtualenv active (``cdk synth``, or ``python app.py`` which writes to a temporary folder).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra import REPO_ROOT
from infra.config import ConfigError, DeployConfig
from infra.organization import add_organization
from infra.stack import ImdsEnforcerStack, stack_name


def cdk_json_context() -> dict[str, Any]:
    """cdk.json's context: the CDK CLI passes it (with -c overrides on top); plain ``python app.py`` does not."""
    context = json.loads((REPO_ROOT / "cdk.json").read_text()).get("context", {})
    return dict(context)


def build_app(context: Mapping[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    """Build the whole app; ``context`` overrides cdk.json, and the CLI's context (-c) overrides both.

    Raises ConfigError (naming the context key) on a bad value. Tests call this, so they synthesize what deploys.
    """
    app = cdk.App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    names = DeployConfig.context_keys()
    config = DeployConfig.from_context({name: app.node.try_get_context(name) for name in names})

    if config.organization_mode:
        # The StackSet path: asset stacks per region, the StackSet, the security account's topic (infra.organization).
        add_organization(app, config)
    else:
        for region in config.regions:
            name = stack_name(region)
            ImdsEnforcerStack(app, name, config=config, env=cdk.Environment(account=config.account, region=region))

    # cdk-nag 3 is a policy-validation plugin: any unacknowledged finding makes synth fail.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> int:
    try:
        app = build_app()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`imds-enforcer`: the service's command line, for a workstation or CI.

It runs the same core code as the Lambdas (the usage gate, the launch-source sweep, the guardrail documents)
against the default credential chain, or a local emulator through `--endpoint-url`. `audit.run_audit` and the
`render` functions are the API the demo and other callers use; `main.main` is the console script.
"""

from __future__ import annotations

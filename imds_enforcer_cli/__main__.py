"""`python -m imds_enforcer_cli`: the same as the `imds-enforcer` console script."""

from __future__ import annotations

import sys

from imds_enforcer_cli.main import main

sys.exit(main())

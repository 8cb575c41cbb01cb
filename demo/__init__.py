"""The local demo (`python -m demo`): a moto server on 127.0.0.1, a seeded fleet with 14 days of metrics, the real
handlers called as Lambda would call them, and the reports read back from a queue subscribed to the topic."""

from __future__ import annotations

import sys
from pathlib import Path

# The Lambda code is the package `imds_enforcer` under functions/ (as in the Lambda); make it importable here.
_FUNCTIONS = str(Path(__file__).resolve().parent.parent / "functions")
if _FUNCTIONS not in sys.path:
    sys.path.insert(0, _FUNCTIONS)

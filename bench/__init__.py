"""Benchmarks (`python -m bench`): cold import, AWS calls per event or run, and the Lambda layer's size."""

from __future__ import annotations

import sys
from pathlib import Path

# The Lambda code is the package `imds_enforcer` under functions/ (as in the Lambda); make it importable here.
ROOT = Path(__file__).resolve().parent.parent
_FUNCTIONS = str(ROOT / "functions")
if _FUNCTIONS not in sys.path:
    sys.path.insert(0, _FUNCTIONS)

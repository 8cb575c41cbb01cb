"""The CDK app's infrastructure: deploy configuration, the dependencies layer, constructs and the stack.

The Lambda code's settings model (``functions/imds_enforcer/settings.py``) is the single source of truth for the
Lambda environment, so ``functions/`` must be importable here as it is inside the Lambda.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"

if str(FUNCTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(FUNCTIONS_DIR))

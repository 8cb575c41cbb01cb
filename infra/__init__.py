"""The CDK app's infrastructure: deploy configuration, the dependencies layer, constructs and the stack.

The Lambda code's settings model (``imds_enforcer.domain.settings``) is the single declaration of every runtime
setting; the editable install (``make setup``) makes the package importable here as it is inside the Lambda.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"

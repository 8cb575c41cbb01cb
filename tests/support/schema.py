"""Every report the tests read back is checked against the published JSON Schema (docs/report-schema.json)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "report-schema.json"


@functools.cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid_report(report: Any) -> None:
    errors = sorted(_validator().iter_errors(report), key=lambda error: list(error.path))
    assert not errors, "report does not match docs/report-schema.json: " + "; ".join(
        f"{'/'.join(map(str, error.path)) or '(root)'}: {error.message}" for error in errors[:5]
    )

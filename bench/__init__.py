"""Benchmarks (`python -m bench`): cold import, AWS calls per event or run, and the Lambda layer's size."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

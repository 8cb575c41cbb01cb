"""The dependencies layer: vendored for the Lambda's platform, and not rebuilt when nothing changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra import layer


def _requirements(tmp_path: Path) -> Path:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.13.4\n")
    return requirements


def test_first_build_runs_pip_for_the_lambda_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr("infra.layer.subprocess.run", fake_run)
    out_dir = tmp_path / "layer"

    assert layer.build_dependencies_layer(requirements=_requirements(tmp_path), out_dir=out_dir, python_version="3.14")

    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    joined = " ".join(command)
    for expected in (
        f"--target {out_dir / 'python'}",
        "--platform manylinux2014_aarch64",
        "--python-version 3.14",
        "--implementation cp",
        "--only-binary=:all:",
    ):
        assert expected in joined
    assert (out_dir / layer.MARKER_NAME).is_file()


def test_unchanged_requirements_skip_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = _requirements(tmp_path)
    out_dir = tmp_path / "layer"
    monkeypatch.setattr("infra.layer.subprocess.run", lambda command, **_: subprocess.CompletedProcess(command, 0))
    layer.build_dependencies_layer(requirements=requirements, out_dir=out_dir, python_version="3.14")

    def must_not_run(*_: Any, **__: Any) -> None:
        raise AssertionError("pip ran although the layer is up to date")

    monkeypatch.setattr("infra.layer.subprocess.run", must_not_run)
    layer.build_dependencies_layer(requirements=requirements, out_dir=out_dir, python_version="3.14")

    # A different runtime needs other wheels (pydantic-core is compiled per CPython version).
    monkeypatch.setattr("infra.layer.subprocess.run", lambda command, **_: subprocess.CompletedProcess(command, 0))
    (out_dir / layer.MARKER_NAME).write_text("stale\n")
    layer.build_dependencies_layer(requirements=requirements, out_dir=out_dir, python_version="3.15")
    assert (out_dir / layer.MARKER_NAME).read_text().strip() != "stale"


def test_a_failed_install_raises_with_pips_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "infra.layer.subprocess.run", lambda command, **_: subprocess.CompletedProcess(command, 1, "", "no wheel")
    )

    with pytest.raises(RuntimeError, match="no wheel"):
        layer.build_dependencies_layer(
            requirements=_requirements(tmp_path), out_dir=tmp_path / "layer", python_version="3.14"
        )
    assert not (tmp_path / "layer" / layer.MARKER_NAME).exists()

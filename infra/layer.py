"""Vendors the Lambdas' third-party dependencies into a layer folder at synth time, without Docker.

pip downloads wheels built for the Lambda's platform (Linux, ARM64, the runtime's CPython) instead of the
machine's: pydantic-core is compiled, so a wheel for the wrong Python or CPU would fail to import in Lambda.
boto3 is not vendored: the Lambda runtime ships it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

PLATFORM = "manylinux2014_aarch64"
MARKER_NAME = ".requirements-sha256"


def _fingerprint(requirements: Path, python_version: str) -> str:
    # The target platform and Python are part of the key: changing the runtime must rebuild the layer.
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"\n{PLATFORM} cp{python_version}".encode())
    return digest.hexdigest()


def build_dependencies_layer(*, requirements: Path, out_dir: Path, python_version: str) -> Path:
    """Install ``requirements`` into ``out_dir/python`` (the layer layout Lambda expects) and return ``out_dir``.

    Skipped when ``out_dir/.requirements-sha256`` says the folder already holds these requirements, so a warm
    synth costs nothing. Raises RuntimeError with pip's output if the install fails.
    """
    marker = out_dir / MARKER_NAME
    fingerprint = _fingerprint(requirements, python_version)
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return out_dir

    # Start clean: a half-finished or outdated install must not leak into the layer.
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [
        sys.executable, "-m", "pip", "install",
        "--quiet", "--disable-pip-version-check", "--no-compile",
        "--target", str(out_dir / "python"),
        "--platform", PLATFORM,
        "--python-version", python_version,
        "--implementation", "cp",
        "--only-binary=:all:",
        "-r", str(requirements),
    ]  # fmt: skip
    # No shell, and every argument is ours: pip of this interpreter, fixed options, the project's requirements.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"building the dependencies layer failed ({' '.join(command)}):\n{result.stderr}")
    # Written last, so an interrupted install is redone next time.
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")
    return out_dir

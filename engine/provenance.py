"""Where an artefact came from, as far as this machine can tell: the code's git commit and the versions
of the packages that shaped it. Recorded by training (in the checkpoint) and export (in spec.json).
"""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions change what an artefact computes or how it is built.
PACKAGES = ("jlml-engine", "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "tensorrt",
            "tensorrt-cu12")
CHECKOUT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10


def package_versions() -> dict[str, str]:
    """Python and each installed distribution of PACKAGES (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version(checkout: Path = CHECKOUT) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout this code runs from; None when it is not
    one (an installed wheel) or git is not there. ``dirty``: tracked files differ from the commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}

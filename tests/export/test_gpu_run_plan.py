"""benchmarks/gpu_run.sh builds the plan (--require-trt) where a real TensorRT imports, else says why not.

Python is replaced by a shim that runs ``-c`` snippets with the real interpreter and only records every
other command, so the script's decisions are tested in seconds without a GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *, fake_tensorrt: str | None) -> tuple[str, str]:
    calls = tmp_path / "calls.log"
    shim = tmp_path / "python"
    shim.write_text(f'#!/usr/bin/env bash\ncase "$1" in -c) exec "{sys.executable}" "$@";; esac\n'
                    f'echo "$*" >> "{calls}"\nexit 0\n')
    shim.chmod(0o755)
    path = [str(tmp_path / "site")]
    if fake_tensorrt is not None:
        (tmp_path / "site" / "tensorrt").mkdir(parents=True)
        (tmp_path / "site" / "tensorrt" / "__init__.py").write_text(fake_tensorrt)
    art = tmp_path / "art"
    art.mkdir()
    (art / "spec.json").write_text('{"min_batch": 1, "opt_batch": 16, "max_batch": 64}')
    env = {**os.environ, "PYTHON": str(shim), "PYTHONPATH": os.pathsep.join([*path, str(ROOT)]),
           "GPU_RUN_DEVICE": "cpu", "GPU_RUN_QUICK": "1", "GPU_RUN_BUDGET_S": "120"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(art), str(tmp_path / "out"),
                           str(tmp_path / "last.pt")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return (calls.read_text() if calls.exists() else ""), done.stdout


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_the_plan_is_built_where_tensorrt_imports(tmp_path):
    calls, _ = _run(tmp_path, fake_tensorrt="Builder = object\n")
    build = [line for line in calls.splitlines() if "export.build_engine" in line]
    assert build == [f"-m export.build_engine {tmp_path / 'last.pt'} --out {tmp_path / 'art'} --require-trt "
                     "--min-batch 1 --opt-batch 16 --max-batch 64"]
    assert calls.index("export.build_engine") < calls.index("benchmarks.latency")


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
@pytest.mark.parametrize("fake", [None, "# an empty namespace, as tensorrt-stubs leaves\n"])
def test_no_plan_build_without_a_real_tensorrt(tmp_path, fake):
    calls, out = _run(tmp_path, fake_tensorrt=fake)
    assert "export.build_engine" not in calls and "benchmarks.latency" in calls
    assert "build-plan: skipped, tensorrt is not importable here" in out

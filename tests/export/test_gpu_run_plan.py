"""benchmarks/gpu_run.sh builds the plan (--require-trt) where a real TensorRT and pycuda import, else says
why not; its budget keeps the run under 8 minutes with the checks first; gpu_pylib.sh builds its pytest.

Python is replaced by a shim that runs ``-c`` snippets with the real interpreter and only records every
other command, so the script's decisions are tested in seconds without a GPU.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *, fake_tensorrt: str | None, pycuda: bool = True, env_extra: dict | None = None,
         ) -> tuple[str, str]:
    calls = tmp_path / "calls.log"
    shim = tmp_path / "python"
    shim.write_text(f'#!/usr/bin/env bash\ncase "$1" in -c) exec "{sys.executable}" "$@";; esac\n'
                    f'echo "$*" >> "{calls}"\nexit 0\n')
    shim.chmod(0o755)
    path = [str(tmp_path / "site")]
    if fake_tensorrt is not None:
        (tmp_path / "site" / "tensorrt").mkdir(parents=True)
        (tmp_path / "site" / "tensorrt" / "__init__.py").write_text(fake_tensorrt)
    if pycuda:
        (tmp_path / "site" / "pycuda").mkdir(parents=True)
        (tmp_path / "site" / "pycuda" / "__init__.py").write_text("")
        (tmp_path / "site" / "pycuda" / "driver.py").write_text("")
    art = tmp_path / "art"
    art.mkdir()
    (art / "spec.json").write_text('{"min_batch": 1, "opt_batch": 16, "max_batch": 64}')
    env = {**os.environ, "PYTHON": str(shim), "PYTHONPATH": os.pathsep.join([*path, str(ROOT)]),
           "GPU_RUN_DEVICE": "cpu", "GPU_RUN_QUICK": "1", "GPU_RUN_BUDGET_S": "120", **(env_extra or {})}
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
    # the checks before the figures: what "done" rests on runs first when the budget is short
    assert calls.index("-m gpu or trt") < calls.index("test_backends.py") < calls.index("benchmarks.latency")


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
@pytest.mark.parametrize("fake", [None, "# an empty namespace, as tensorrt-stubs leaves\n"])
def test_no_plan_build_without_a_real_tensorrt(tmp_path, fake):
    calls, out = _run(tmp_path, fake_tensorrt=fake)
    assert "export.build_engine" not in calls and "benchmarks.latency" in calls
    assert "build-plan: skipped, tensorrt or pycuda is not importable here" in out


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_no_plan_build_with_tensorrt_but_without_pycuda(tmp_path):
    """A TensorRT container without pycuda: the plan could be built but not run, so it is not built."""
    calls, out = _run(tmp_path, fake_tensorrt="Builder = object\n", pycuda=False)
    assert "export.build_engine" not in calls and "benchmarks.latency" in calls
    assert "build-plan: skipped" in out and "needs pycuda.driver" in out


def test_the_default_budget_keeps_the_run_under_8_minutes_and_leaves_1e7_out_with_a_reason():
    script = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    budget = int(re.search(r"GPU_RUN_BUDGET_S:-(\d+)", script).group(1))
    grace = int(re.search(r"timeout --kill-after=(\d+)", script).group(1))
    assert budget + grace + 15 < 8 * 60  # the last step may start 15 s before the deadline
    assert 'if [ "${GPU_RUN_1E7:-0}" != 1 ]; then' in script and "gallery-1e7: left out:" in script


def test_gpu_pylib_unpacks_pure_python_pytest_wheels_for_python_3_12(tmp_path):
    """pip is stood in (no network in tests): it must be asked for py3-none-any wheels of pytest for
    3.12; the wheels are unpacked into the folder gpu_run.sh puts on PYTHONPATH."""
    import zipfile

    calls, wheels = tmp_path / "pip.log", tmp_path / "w"
    with zipfile.ZipFile(tmp_path / "pytest-9.0-py3-none-any.whl", "w") as whl:
        whl.writestr("pytest/__init__.py", "__version__ = '9.0'\n")
    shim = tmp_path / "python"
    shim.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2" = "-m pip" ]; then echo "$*" >> "{calls}"; '
                    f'while [ "$1" != "-d" ]; do shift; done; cp "{tmp_path}"/*.whl "$2"/; exit 0; fi\n'
                    f'exec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    dest = tmp_path / "pylib"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_pylib.sh"), str(dest)], cwd=ROOT,
                          env={**os.environ, "PYTHON": str(shim)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    asked = calls.read_text()
    assert "--only-binary=:all: --python-version 3.12 --implementation py --abi none --platform any" in asked
    assert asked.rstrip().endswith("pytest") and (dest / "pytest" / "__init__.py").is_file()
    assert f"wrote {dest}" in done.stdout and not wheels.exists()

"""Type-check every module that touches TensorRT against TensorRT 10.13's published signatures.

    python tools/typecheck_trt.py [--build-dir build]     (what `make lint` and the test suite run)

``tensorrt-stubs`` is installed with ``--no-deps --target BUILD/trt-stubs-raw``, never into the
environment: its ``tensorrt/`` folder would make ``import tensorrt`` succeed there as an empty package.
Its ``tensorrt_bindings/tensorrt.pyi`` names some parameters ``in``, a syntax error mypy stops on, so a
copy with those renamed to ``in_`` is generated into ``BUILD/trt-stubs`` and checked: it must parse,
and differ from the original only in those names. mypy then runs with ``MYPYPATH`` pointing there.
Exit code: mypy's (0 clean), 2 when the stubs cannot be prepared.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STUBS = "tensorrt-stubs==10.13.0.35.1"
PACKAGES = ("tensorrt", "tensorrt_bindings")
MODULES = ["engine/backends/trt.py", "engine/backends/plan_sidecar.py", "engine/backends/optional.py",
           "export/trt_build.py", "export/build_engine.py"]
ROOT = Path(__file__).resolve().parent.parent
# The stubs' two kinds of syntax errors, each repaired on `def` lines only: parameters named `in`
# (a keyword) and one signature with a required parameter after defaulted ones (given `= ...`).
_REPAIRS = [(re.compile(r"(?<=[(,] )in(?=: )|(?<=\()in(?=: )"), "in_"),
            (re.compile(r"(?<=, channel_axis: int)(?=\) -> IScaleLayer:)"), " = ...")]


def _repaired(line: str) -> str:
    for pattern, replacement in _REPAIRS:
        line = pattern.sub(replacement, line)
    return line


def fixed_text(text: str) -> str:
    """``text`` with the known syntax errors repaired on ``def`` lines; verified, or ValueError.

    Each changed line must have failed to parse before and parse after, and the whole file must parse.
    """
    lines = text.splitlines(keepends=True)
    out = [_repaired(line) if line.lstrip().startswith("def ") else line for line in lines]
    for before, after in zip(lines, out, strict=True):
        if before != after and (_parses(before) or not _parses(after)):
            raise ValueError(f"repair of a line that was not broken or is still broken: {before.strip()}")
    fixed = "".join(out)
    ast.parse(fixed)  # SyntaxError if anything else is wrong
    return fixed


def _parses(def_line: str) -> bool:
    try:
        ast.parse(def_line.strip() + " ...")
    except SyntaxError:
        return False
    return True


def _install(raw: Path) -> None:
    if not (raw / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(raw), STUBS],
                       check=True)


def prepare(build: Path) -> Path:
    """Install the stubs (once) and write the checked copy; return the folder for MYPYPATH."""
    raw, fixed = build / "trt-stubs-raw", build / "trt-stubs"
    _install(raw)
    shutil.rmtree(fixed, ignore_errors=True)
    for package in PACKAGES:
        for source in (raw / package).rglob("*.pyi"):
            target = fixed / source.relative_to(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(fixed_text(source.read_text()))
    return fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/typecheck_trt.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build",
                        help="where the stubs are installed and fixed (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        stubs = prepare(args.build_dir)
    except (subprocess.CalledProcessError, OSError, ValueError, SyntaxError) as exc:
        print(f"error: cannot prepare {STUBS} under {args.build_dir}: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, "MYPYPATH": str(stubs)}
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(args.build_dir / "mypy-cache"), *MODULES]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

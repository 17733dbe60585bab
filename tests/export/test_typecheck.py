"""The modules that touch TensorRT type-check against TensorRT 10.13's published stubs (mypy)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("typecheck_trt", ROOT / "tools" / "typecheck_trt.py")
typecheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(typecheck)


def test_stub_repair_renames_only_broken_parameters():
    text = ("class A:\n    def f(self, in: list[int], out: list[int]) -> int:\n        ...\n"
            "    def g(self, input: int) -> None:\n        ...\n")
    fixed = typecheck.fixed_text(text)
    assert "def f(self, in_: list[int], out: list[int])" in fixed and "def g(self, input: int)" in fixed
    with pytest.raises(SyntaxError):
        typecheck.fixed_text("def h(self) -> int\n")  # a break the repair does not know stays an error


@pytest.mark.slow
def test_tensorrt_modules_type_check_against_the_stubs(capfd):
    pytest.importorskip("mypy")
    rc = typecheck.main([])
    out = capfd.readouterr()
    if rc == 2 and "cannot prepare" in out.err:
        pytest.skip(f"tensorrt-stubs could not be installed here: {out.err.strip()[-300:]}")
    assert rc == 0, out.out + out.err
    assert "Success: no issues found" in out.out

"""benchmarks.demo is the one demo (what `make demo` runs); its command line fails fast on a bad --out."""
from __future__ import annotations

from pathlib import Path

from benchmarks import demo

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_benchmarks_demo_and_only_it_claims_so() -> None:
    assert "-m benchmarks.demo" in (ROOT / "Makefile").read_text()
    claims = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.py")
              if p.parts[-2] in {"engine", "export", "train", "benchmarks"}
              and "what ``make demo`` runs" in p.read_text()]
    assert claims == ["benchmarks/demo.py"]


def test_out_that_is_a_file_exits_2_before_any_work(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "demo"
    afile.write_text("")
    assert demo.main(["--out", str(afile)]) == 2
    captured = capsys.readouterr()
    assert "is a file, expected a folder" in captured.err and "== data" not in captured.out

"""Every command line shares engine.cli's conventions: --help shows defaults, the same flag names."""
from __future__ import annotations

import importlib

import pytest

# module -> flags its --help must show (beside defaults)
CLIS = {
    "train.__main__": ["--no-progress", "--threads"],
    "train.evaluate": ["--no-progress", "--checkpoint", "--artifact"],
    "train.study": ["--no-progress", "--out"],
    "train.sparsity_report": ["--json"],
    "export.build_engine": ["--out"],
    "benchmarks.latency": ["--artifact DIR", "--checkpoint CKPT", "--out DIR"],
    "benchmarks.e2e": ["--artifact DIR", "--checkpoint CKPT", "--out DIR"],
    "benchmarks.demo": ["--no-progress", "--out DIR"],
    "benchmarks.gallery": ["--out"],
    "benchmarks.serve": ["--artifact DIR", "--out DIR"],
    "benchmarks.ray_embed": ["--artifact DIR", "--out DIR"],
    "benchmarks.sharded": ["--out DIR"],
    "serve.__main__": ["--gallery"],
    "engine.embed": ["--artifact DIR", "--no-progress"],
    "engine.query": ["--artifact DIR", "--gallery", "--no-progress"],
}


@pytest.mark.parametrize("module", CLIS)
def test_help_shows_defaults_and_the_shared_flag_names(module, capsys) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default:" in text and "(default: None)" not in text
    assert all(flag in text for flag in CLIS[module]), [f for f in CLIS[module] if f not in text]


@pytest.mark.parametrize("module", ["benchmarks.serve", "benchmarks.ray_embed"])
def test_benchmarks_take_the_artefact_as_artifact_flag(module, tmp_path, capsys) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "--artifact" in capsys.readouterr().err

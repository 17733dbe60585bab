"""A tiny trained-format checkpoint and the artefact folder export builds from it (seconds, once).

The benchmarks read what users hand them, a checkpoint and an export folder, so the fixture goes
through the real ``export.build_engine`` CLI rather than a hand-made folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.build_engine import main as build_engine  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.config import JLMLConfig  # noqa: E402
from train.model import JLML  # noqa: E402

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)


@pytest.fixture(scope="session")
def bench_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = JLML(JLMLConfig(**TINY), num_classes=5).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", model, model.cfg, epoch=1, num_classes=5)


@pytest.fixture(scope="session")
def bench_artifacts(tmp_path_factory: pytest.TempPathFactory, bench_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("artefact")
    assert build_engine([str(bench_checkpoint), "--out", str(out), "--max-batch", "16", "--opt-batch", "8",
                         "--no-simplify"]) == 0
    return out

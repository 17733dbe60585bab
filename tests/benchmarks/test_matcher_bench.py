"""benchmarks.matcher on a tiny fused checkpoint: the three graphs are timed and the profile adds up."""
from __future__ import annotations

import json

import pytest
import torch

from train.checkpoint import save_checkpoint, save_matcher
from train.config import JLMLConfig
from train.data.datasets import load_reid_set
from train.fusion import lomo_descriptors
from train.hybrid import HybridMatcher
from train.lomo import LOMO, LOMOConfig
from train.model import JLML, config_spec
from train.xqda import fit_xqda

pytest.importorskip("onnxruntime")


def test_times_fused_and_parts_and_attributes_the_time(tmp_path):
    from benchmarks import matcher as bench

    cfg = JLMLConfig(height=32, width=16, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)
    data = load_reid_set("synthetic", height=32, width=16, num_ids=12, num_test=4)
    torch.manual_seed(0)
    jlml = JLML(cfg, data.num_classes).eval()
    path = save_checkpoint(tmp_path / "last.pt", jlml, cfg, epoch=1, num_classes=data.num_classes)
    lomo = LOMO(LOMOConfig(), 32, 16)
    metric = fit_xqda(lomo_descriptors(lomo, data.train_images), data.train_pids, data.train_cams)
    save_matcher(path, HybridMatcher(jlml, LOMOConfig(), config_spec(cfg), metric, (1.0, 0.5)), cfg)
    assert bench.main(["--checkpoint", str(path), "--out", str(tmp_path / "out"), "--batch", "4",
                       "--repeats", "2"]) == 0
    report = json.loads((tmp_path / "out" / "matcher.json").read_text())
    rows = {r["graph"]: r for r in report["results"]}
    assert set(rows) == {"fused", "jlml alone", "lomo+xqda alone"}
    assert rows["fused"]["dim"] == rows["jlml alone"]["dim"] + rows["lomo+xqda alone"]["dim"]
    assert rows["jlml alone"]["vs_jlml"] == 1.0 and all(r["calls"] == 2 for r in rows.values())
    shares = report["fused_time_share_pct"]
    assert abs(sum(shares.values()) - 100.0) < 1e-6 and "JLML" in shares
    assert any(stage.startswith("LOMO: ") for stage in shares)
    assert "Where the fused graph's node time goes" in (tmp_path / "out" / "matcher.md").read_text()


def test_a_jlml_checkpoint_is_refused(tmp_path, capsys):
    from benchmarks import matcher as bench

    cfg = JLMLConfig(height=32, width=16, widths=(4, 8), blocks=(1, 1), feat_dim=16)
    path = save_checkpoint(tmp_path / "last.pt", JLML(cfg, 3), cfg, epoch=1, num_classes=3)
    assert bench.main(["--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "expected a fused matcher" in capsys.readouterr().err

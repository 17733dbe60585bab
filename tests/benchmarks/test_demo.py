"""The full demo pipeline (train -> export -> engine) on a tiny model: the engine scores what PyTorch scores."""
import json

import pytest

from benchmarks import demo
from train.config import JLMLConfig
from train.demo import DemoState, run_demo
from train.loop import TrainOptions

TINY = JLMLConfig(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)


def test_engine_row_matches_pytorch_row(tmp_path, capsys):
    state = DemoState(out=tmp_path, cfg=TINY, opts=TrainOptions(epochs=1, batch_size=8, progress=False),
                      data_options={"num_ids": 12, "num_test": 4})
    stages = [s for s in demo.STAGES if s is not demo.stage_speed]
    state = run_demo(state, stages)
    torch_row = state.results["trained (PyTorch)"]
    engine_rows = [name for name in state.results if name.startswith("trained (engine")]
    assert engine_rows == ["trained (engine: ort fp32)"]
    engine_row = state.results[engine_rows[0]]
    assert engine_row["rank1"] == pytest.approx(torch_row["rank1"], abs=1e-9)
    assert engine_row["mAP"] == pytest.approx(torch_row["mAP"], abs=1e-4)
    parity = state.extra["parity"]
    assert (state.extra["artifact"] / "model.onnx").is_file() and parity
    assert json.loads((tmp_path / "demo.json").read_text())["results"] == state.results
    assert "trained (engine: ort fp32)" in capsys.readouterr().out

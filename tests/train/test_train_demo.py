"""The demo's stages run end to end on a tiny synthetic set and a tiny model."""
import json

from train.checkpoint import load_checkpoint
from train.demo import STAGES, DemoState, run_demo
from train.loop import TrainOptions


def test_demo_stages_produce_both_rows_and_a_checkpoint(tmp_path, tiny_cfg, capsys):
    state = DemoState(out=tmp_path, cfg=tiny_cfg, opts=TrainOptions(epochs=1, batch_size=8, progress=False),
                      data_options={"num_ids": 12, "num_test": 4})
    seen = []

    def later_stage(s: DemoState) -> DemoState:  # what export/engine stages will look like
        seen.append(s.checkpoint)
        return s

    state = run_demo(state, [*STAGES[:-1], later_stage, STAGES[-1]])
    assert list(state.results) == ["untrained (PyTorch)", "trained (PyTorch)", "its JLML part alone (PyTorch)",
                                   "its LOMO + XQDA part alone (PyTorch)"]
    assert seen == [state.checkpoint] and load_checkpoint(state.checkpoint).config == tiny_cfg
    assert load_checkpoint(state.checkpoint).extra["fusion"]["kind"] == "fused"  # the demo serves the matcher
    assert list(state.timings) == ["data", "untrained", "train", "later_stage", "report"]
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["results"] == state.results
    assert "| trained (PyTorch) |" in capsys.readouterr().out


def test_demo_can_serve_jlml_alone(tmp_path, tiny_cfg):
    state = DemoState(out=tmp_path, cfg=tiny_cfg, opts=TrainOptions(epochs=1, batch_size=8, progress=False),
                      data_options={"num_ids": 12, "num_test": 4}, matcher="jlml")
    state = run_demo(state, STAGES)
    assert list(state.results) == ["untrained (PyTorch)", "trained (PyTorch)"]
    assert "matcher" not in load_checkpoint(state.checkpoint).spec.extra

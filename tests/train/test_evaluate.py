"""``python -m train.evaluate``: PyTorch and the engine on the checkpoint's own split, side by side."""
import json

import pytest
import torch

from export import build_engine
from train.checkpoint import save_checkpoint
from train.config import JLMLConfig
from train.data import load_reid_set
from train.evaluate import DIFF, PYTORCH, main, worst_difference
from train.loop import evaluate_model
from train.model import JLML

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)
DATA = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4",
        "--split-seed", "1", "--threads", "1"]
ONNXRUNTIME, ONNXRUNTIME_FP16 = "ort fp32", "ort fp16"
TRAINED_ON = {"dataset": "synthetic", "split_seed": 1, "options": {"num_ids": 12, "num_test": 4}}


def _checkpoint(folder, seed, data=None, **changes):
    """A checkpoint as python -m train writes it (``data``: the split it records; None: an old one)."""
    torch.manual_seed(seed)
    model = JLML(JLMLConfig(**{**TINY, **changes}), num_classes=8).eval()
    return save_checkpoint(folder / "last.pt", model, model.cfg, epoch=1, num_classes=8,
                           extra={"data": data} if data else None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt"), seed=0)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("artefact") / "out"
    args = [str(checkpoint), "--out", str(out), "--max-batch", "16", "--opt-batch", "8"]
    assert build_engine.main(args) == 0
    return out


def test_both_backends_side_by_side_and_they_agree(checkpoint, artifact, tmp_path, capsys):
    report = tmp_path / "eval.json"
    assert main(["--checkpoint", str(checkpoint), "--artifact", str(artifact), *DATA, "--backend", "ort",
                 "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {row} |" in printed for row in (PYTORCH, ONNXRUNTIME, DIFF))
    saved = json.loads(report.read_text())
    rows = saved["rows"]
    data = load_reid_set("synthetic", height=32, width=16, split_seed=1, num_ids=12, num_test=4)
    model = JLML(JLMLConfig(**TINY), num_classes=8)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    assert rows[PYTORCH] == pytest.approx(evaluate_model(model.eval(), data))
    for key in ("rank1", "rank5", "mAP"):
        assert rows[ONNXRUNTIME][key] == pytest.approx(rows[PYTORCH][key], abs=1e-6)
    assert saved["max_embedding_diff"] < 1e-4 and "max abs embedding difference" in printed


def test_without_artifact_only_pytorch_is_evaluated(checkpoint, tmp_path):
    report = tmp_path / "eval.json"
    assert main(["--checkpoint", str(checkpoint), *DATA, "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert list(saved["rows"]) == [PYTORCH] and saved["max_embedding_diff"] is None
    assert worst_difference(saved["rows"]) == 0.0


def test_artifact_of_another_checkpoint_shows_the_difference(artifact, tmp_path):
    other = _checkpoint(tmp_path, seed=1)
    report = tmp_path / "eval.json"
    code = main(["--checkpoint", str(other), "--artifact", str(artifact), *DATA, "--backend", "ort",
                 "--json", str(report)])
    saved = json.loads(report.read_text())
    assert saved["max_embedding_diff"] > 0.05
    assert code == (1 if worst_difference(saved["rows"]) > 0.01 else 0) and ONNXRUNTIME in saved["rows"]


def test_artifact_of_another_size_exits_2(artifact, tmp_path, capsys):
    other = _checkpoint(tmp_path, seed=0, feat_dim=8)
    assert main(["--checkpoint", str(other), "--artifact", str(artifact), *DATA]) == 2
    assert "embedding_dim" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt"), *DATA]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("tolerance", ["-1", "nan", "inf", "lots"])
def test_a_negative_or_non_finite_tolerance_is_refused(tolerance, checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(checkpoint), *DATA, "--tolerance", tolerance])
    assert exit_.value.code == 2
    assert f"--tolerance: expected a number of at least 0 (e.g. 0.01), got {tolerance!r}" in capsys.readouterr().err


def test_engine_flags_without_an_artifact_are_refused_not_ignored(checkpoint, capsys):
    assert main(["--checkpoint", str(checkpoint), *DATA, "--backend", "trt", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "--backend trt --precision fp16 choose how --artifact is served, and no --artifact was given" in err
    assert "Traceback" not in err


def test_worst_difference_is_the_largest_metric_gap():
    rows = {PYTORCH: {}, ONNXRUNTIME: {}, DIFF: {"rank1": 0.02, "mAP": 0.005}}
    assert worst_difference(rows) == 0.02


def test_fp16_engine_accuracy_is_one_command(checkpoint, artifact, tmp_path, capsys):
    report = tmp_path / "eval.json"
    assert main(["--checkpoint", str(checkpoint), "--artifact", str(artifact), *DATA, "--backend", "ort",
                 "--precision", "fp16", "--tolerance", "1", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert list(rows) == [PYTORCH, ONNXRUNTIME_FP16, DIFF] and f"| {ONNXRUNTIME_FP16} |" in capsys.readouterr().out
    assert rows[ONNXRUNTIME_FP16]["mAP"] == pytest.approx(rows[PYTORCH]["mAP"], abs=0.05)


def test_the_split_comes_from_the_checkpoint(tmp_path):
    ck = _checkpoint(tmp_path, seed=0, data=TRAINED_ON)
    report = tmp_path / "eval.json"
    assert main(["--checkpoint", str(ck), "--threads", "1", "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert saved["data"] == TRAINED_ON
    data = load_reid_set("synthetic", height=32, width=16, split_seed=1, num_ids=12, num_test=4)
    model = JLML(JLMLConfig(**TINY), num_classes=8)
    model.load_state_dict(torch.load(ck, weights_only=True)["state_dict"])
    assert saved["rows"][PYTORCH] == pytest.approx(evaluate_model(model.eval(), data))


@pytest.mark.parametrize("asked", [["--split-seed", "0"], ["--dataset", "viper"], ["--data-option", "num_test=5"]])
def test_another_split_is_refused_unless_allowed(tmp_path, capsys, asked):
    ck = _checkpoint(tmp_path, seed=0, data=TRAINED_ON)
    assert main(["--checkpoint", str(ck), "--threads", "1", *asked]) == 2
    err = capsys.readouterr().err
    assert "in checkpoint" in err and "--allow-mismatch" in err and "Traceback" not in err
    if asked[0] == "--split-seed":
        assert main(["--checkpoint", str(ck), "--threads", "1", *asked, "--allow-mismatch"]) == 0
        assert "warning: evaluating on other data" in capsys.readouterr().err


def test_old_checkpoint_without_its_data_set_needs_it_named(tmp_path, capsys):
    ck = _checkpoint(tmp_path, seed=0)
    assert main(["--checkpoint", str(ck), "--threads", "1"]) == 2
    assert "does not record the data set" in capsys.readouterr().err

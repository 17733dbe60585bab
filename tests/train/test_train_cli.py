"""``python -m train`` end to end on a tiny synthetic set with a tiny model."""
import json

from train.__main__ import main
from train.checkpoint import load_checkpoint

TINY_ARGS = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4",
             "--height", "32", "--width", "16", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16",
             "--batch-size", "8", "--threads", "1", "--no-progress"]


def test_cli_trains_evaluates_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and "rank1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["rank1"] <= 1.0 and metrics["config"]["widths"] == [4, 8]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 1 and ck.spec.embedding_dim == 32
    # resuming a finished run with the same flags trains nothing more and succeeds
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--resume"]) == 0


def test_cli_resume_with_other_model_flags_fails_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--no-augment"]) == 0
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--resume", "--branches", "global"]) == 2
    err = capsys.readouterr().err
    assert "branches: 'both' in checkpoint, 'global' asked" in err and "--out" in err


def test_cli_bad_config_exits_2(tmp_path, capsys):
    assert main([*TINY_ARGS, "--height", "30", "--out", str(tmp_path)]) == 2
    assert "height=30" in capsys.readouterr().err

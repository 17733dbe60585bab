"""spec.json says where an artefact came from, and a checkpoint changed under its name is not
re-exported over the old artefact without --force."""
from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from engine.spec import ModelSpec, file_sha256
from export import build_engine
from train.__main__ import main as train

TINY = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4", "--height", "32",
        "--width", "16", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16", "--batch-size", "8",
        "--threads", "1", "--no-progress"]
EXPORT = ["--no-fp16", "--no-simplify", "--max-batch", "8", "--opt-batch", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_spec_records_checkpoint_training_metrics_code_date_and_versions(run, tmp_path):
    ckpt = run / "last.pt"
    assert build_engine.main([str(ckpt), "--out", str(tmp_path / "art"), *EXPORT]) == 0
    prov = ModelSpec.load(tmp_path / "art").extra["provenance"]
    assert prov["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt), "epoch": 1}
    training = prov["training"]
    assert training["data"] == {"dataset": "synthetic", "split_seed": 0, "options": {"num_ids": 12, "num_test": 4}}
    assert training["config"]["widths"] == [4, 8] and training["options"]["epochs"] == 1
    assert training["data_root"] is None and set(training["last_epoch"]) == {"loss", "acc"}
    assert prov["metrics"] == json.loads((run / "metrics.json").read_text())["metrics"]
    assert datetime.fromisoformat(prov["export"]["date"]).tzinfo is not None
    assert {"python", "torch", "numpy", "onnx"} <= set(prov["export"]["versions"])
    code = prov["export"]["code"]  # the tests run from a git checkout
    assert re.fullmatch(r"[0-9a-f]{40}", code["commit"]) and isinstance(code["dirty"], bool)
    assert training["code"] == {"commit": code["commit"], "dirty": training["code"]["dirty"]}
    card = (tmp_path / "art" / "MODEL_CARD.md").read_text()  # data, protocol, metrics, limits
    assert f"sha256 {file_sha256(ckpt)}" in card and "**Data.** synthetic, split seed 0" in card
    assert "Protocol: generated people" in card and f"rank1 {100 * prov['metrics']['rank1']:.2f}" in card
    assert "**Limits.**" in card and "fp32: min cosine" in card and code["commit"] in card


def test_a_checkpoint_changed_under_its_name_is_refused_unless_forced(run, tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes((run / "last.pt").read_bytes())
    out = tmp_path / "art"
    assert build_engine.main([str(ckpt), "--out", str(out), *EXPORT]) == 0
    assert build_engine.main([str(ckpt), "--out", str(out), *EXPORT]) == 0  # the same file: a plain rebuild
    before = (out / "spec.json").read_text()
    assert train([*TINY, "--epochs", "2", "--out", str(run), "--resume"]) == 0  # training went on
    ckpt.write_bytes((run / "last.pt").read_bytes())
    capsys.readouterr()
    assert build_engine.main([str(ckpt), "--out", str(out), *EXPORT]) == 2
    err = capsys.readouterr().err
    assert f"holds the export of {ckpt.resolve()} as it was" in err and "epoch 1" in err and "epoch 2" in err
    assert "--force" in err and (out / "spec.json").read_text() == before
    assert build_engine.main([str(ckpt), "--out", str(out), *EXPORT, "--force"]) == 0
    prov = ModelSpec.load(out).extra["provenance"]
    assert prov["checkpoint"]["epoch"] == 2 and prov["metrics"] is None
    assert prov["metrics_note"] == "no readable metrics.json beside the checkpoint"
    (tmp_path / "metrics.json").write_text((run / "metrics.json").read_text().replace('"checkpoint_sha256": "',
                                                                                    '"checkpoint_sha256": "0'))
    assert build_engine.main([str(ckpt), "--out", str(out), *EXPORT]) == 0
    assert "belongs to another state" in ModelSpec.load(out).extra["provenance"]["metrics_note"]

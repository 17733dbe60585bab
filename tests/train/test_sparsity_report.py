import json

import numpy as np
import pytest
import torch

from engine import InputError
from train.checkpoint import save_checkpoint
from train.model import JLML
from train.sparsity_report import main, weight_sparsity

# Global layer: column norms 5, 0, 0.01 (1e-3 < 0.01/5 < 1e-2), 1 -> under 1e-3 of the max: 1 of 4.
GLOBAL = np.array([[3.0, 0.0, 0.01, 1.0],
                   [4.0, 0.0, 0.0, 0.0]])
# Local layer, 2 stripes of 2 columns: L1 mass 6 and 2 -> shares 0.75 / 0.25.
LOCAL = np.array([[1.0, 2.0, 0.0, -1.0],
                  [-3.0, 0.0, 1.0, 0.0]])


def test_weight_sparsity_counts_small_columns_and_stripe_shares():
    got = weight_sparsity({"global": GLOBAL, "local": LOCAL}, stripes=2)
    assert got["global_max_norm"] == pytest.approx(5.0)
    assert got["global_small_0.001"] == pytest.approx(0.25)
    assert got["global_small_0.01"] == pytest.approx(0.5)
    assert got["global_small_0.1"] == pytest.approx(0.5)
    assert got["local_small_0.1"] == pytest.approx(0.0)
    assert got["stripe_share"] == pytest.approx([0.75, 0.25])


def test_weight_sparsity_leaves_out_missing_branch_and_rejects_bad_stripes():
    assert set(weight_sparsity({"global": GLOBAL}, stripes=4)) == {
        "global_max_norm", "global_small_0.001", "global_small_0.01", "global_small_0.1"}
    with pytest.raises(InputError, match="4 local input columns into 3"):
        weight_sparsity({"local": LOCAL}, stripes=3)


def test_cli_reads_a_study_folder(tmp_path, tiny_cfg):
    model = JLML(tiny_cfg, 3)
    with torch.no_grad():
        model.feature_weights()["global"][:, :2] = 0.0  # switch off 2 of the 8 global channels
    for split in (0, 1):
        save_checkpoint(tmp_path / "joint" / f"split{split}" / "last.pt", model, tiny_cfg, epoch=1, num_classes=3)
    (tmp_path / "joint" / "split0" / "metrics.json").write_text("{}")  # split1 is still "training"
    assert main([str(tmp_path), "--json", str(tmp_path / "s.json")]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["joint"]
    assert row["n"] == 1 and row["global_small_0.001"] == pytest.approx(2 / 8)
    assert sum(row["stripe_share"]) == pytest.approx(1.0) and len(row["stripe_share"]) == tiny_cfg.stripes
    assert main([str(tmp_path), "--variants", "no_such"]) == 2

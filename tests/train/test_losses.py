import math

import pytest
import torch

from engine import InputError
from train.losses import JLMLLoss, exclusive_lasso_l12, group_lasso_l21
from train.model import JLML

W = torch.tensor([[3.0, 0.0, 1.0, -2.0],
                  [4.0, 0.0, -1.0, 0.0]])


def test_group_lasso_sums_column_norms():
    # columns: (3,4) -> 5, (0,0) -> 0, (1,-1) -> sqrt 2, (-2,0) -> 2
    assert group_lasso_l21(W).item() == pytest.approx(5 + 0 + math.sqrt(2) + 2)


def test_exclusive_lasso_squares_l1_per_stripe_block():
    # 2 stripes of 2 columns: |3|+|0|+|4|+|0| = 7 ; |1|+|-2|+|-1|+|0| = 4 -> 49 + 16
    assert exclusive_lasso_l12(W, 2).item() == pytest.approx(65.0)
    # 4 stripes of one column each: 7^2 + 0 + 2^2 + 2^2
    assert exclusive_lasso_l12(W, 4).item() == pytest.approx(57.0)
    with pytest.raises(InputError, match="4 input columns into 3"):
        exclusive_lasso_l12(W, 3)


def test_loss_terms_follow_config(tiny_cfg, tiny_images):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for changes, expected in [
        (dict(), {"ce_global", "ce_local", "l21_global", "l12_local", "total"}),
        (dict(sparsity=False), {"ce_global", "ce_local", "total"}),
        (dict(loss="single", branches="global"), {"ce_joint", "l21_global", "total"}),
    ]:
        cfg = tiny_cfg.replace(**changes)
        model = JLML(cfg, 3)
        terms = JLMLLoss(cfg)(model, model.forward_head(model.forward_features(tiny_images)), labels)
        assert set(terms) == expected


def test_total_is_the_weighted_sum(tiny_cfg, tiny_images):
    cfg = tiny_cfg.replace(global_weight=0.5, local_weight=2.0, lambda_global=0.1, lambda_local=0.01)
    model = JLML(cfg, 3)
    t = JLMLLoss(cfg)(model, model.forward_head(model.forward_features(tiny_images)),
                      torch.tensor([0, 1, 2, 0, 1, 2]))
    expected = (0.5 * t["ce_global"] + 2.0 * t["ce_local"] + 0.1 * t["l21_global"]
                + 0.01 * t["l12_local"])
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert t["l21_global"].item() == pytest.approx(group_lasso_l21(model.branches["global"].feature.weight).item())

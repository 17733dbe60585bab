import math

import pytest
import torch

from engine import InputError
from train.losses import JLMLLoss, batch_hard_triplet, exclusive_lasso_l12, group_lasso_l21
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


def _triplet_by_loops(emb: torch.Tensor, labels: list[int], margin: float) -> float:
    """Batch-hard triplet written anchor by anchor, from the paper's definition."""
    losses = []
    for a in range(len(labels)):
        pos = [float((emb[a] - emb[p]).norm()) for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [float((emb[a] - emb[n]).norm()) for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses)


def test_batch_hard_triplet_is_the_mean_over_anchors_of_hardest_positive_minus_nearest_negative():
    emb = torch.randn(9, 5, generator=torch.Generator().manual_seed(3))
    labels = [0, 0, 1, 1, 1, 2, 2, 3, 4]  # 3 and 4 have no positive: left out as anchors, kept as negatives
    for margin in (0.0, 0.3, 5.0):
        got = batch_hard_triplet(emb, torch.tensor(labels), margin)
        assert got.item() == pytest.approx(_triplet_by_loops(emb, labels, margin), rel=1e-5)


def test_batch_hard_triplet_is_zero_for_separated_people_and_has_finite_gradients_on_equal_vectors():
    far = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    assert batch_hard_triplet(far, torch.tensor([0, 0, 1, 1]), 0.3).item() == 0.0
    same = torch.zeros(4, 3, requires_grad=True)  # every distance 0: the sqrt must not make NaNs
    batch_hard_triplet(same, torch.tensor([0, 0, 1, 1]), 0.3).backward()
    assert torch.isfinite(same.grad).all()
    with pytest.raises(InputError, match="needs a batch with 2 images of one person"):
        batch_hard_triplet(torch.randn(3, 2), torch.tensor([0, 1, 2]), 0.3)


def test_the_triplet_term_acts_on_the_served_unit_embedding_with_its_weight(tiny_cfg, tiny_images):
    cfg = tiny_cfg.replace(triplet_weight=2.5, triplet_margin=0.2)
    model, labels = JLML(cfg, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    features, logits = model.forward_train(tiny_images)
    terms = JLMLLoss(cfg)(model, logits, labels, features)
    want = batch_hard_triplet(model.embed_features(features), labels, 0.2)
    assert terms["triplet"].item() == pytest.approx(want.item())
    without = JLMLLoss(tiny_cfg)(model, logits, labels, features)
    assert "triplet" not in without
    assert terms["total"].item() == pytest.approx(without["total"].item() + 2.5 * want.item(), rel=1e-6)
    with pytest.raises(InputError, match="needs the branch features"):
        JLMLLoss(cfg)(model, logits, labels)

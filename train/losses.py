"""JLML's multi-loss objective: one identity cross-entropy per branch plus structured sparsity, and an
optional batch-hard triplet term on the served embedding (``cfg.triplet_weight``).

The two sparsity terms act on the feature layers (``model.feature_weights()``), i.e. the Linear that
maps a branch's pooled conv channels to its ``feat_dim`` feature; ``W`` below is that Linear's
``weight`` of shape (feat_dim, in_features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError

from .config import JLMLConfig
from .model import JLML


def group_lasso_l21(weight: Tensor) -> Tensor:
    """Group LASSO ``||W||_{2,1} = sum_j sqrt(sum_i W[i, j]^2)`` over the columns of ``W``.

    Each group is one input unit j (a pooled global-branch channel) with all its outgoing weights, so
    the penalty switches whole input features on or off: the global branch selects which of its
    channels it uses.
    """
    return weight.float().norm(p=2, dim=0).sum()


def exclusive_lasso_l12(weight: Tensor, groups: int) -> Tensor:
    """Exclusive group LASSO ``||W||_{1,2} = sum_s (sum_{i, j in stripe s} |W[i, j]|)^2``.

    The input columns of the local feature layer are split into ``groups`` consecutive blocks, block
    s holding the ``C`` pooled channels of stripe s (see ``LocalBranch``). L1 inside a stripe makes
    that stripe's weights compete (few, discriminative ones survive), the square (L2) across stripes
    keeps every stripe in use, so no single body part dominates the local feature.
    """
    rows, cols = weight.shape
    if groups < 1 or cols % groups:
        raise InputError(f"cannot split {cols} input columns into {groups} equal stripe groups; "
                         "pass the model's number of stripes")
    per_stripe = weight.float().abs().reshape(rows, groups, cols // groups).sum(dim=(0, 2))
    return per_stripe.square().sum()


def batch_hard_triplet(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017): for every anchor, its farthest positive and
    its nearest negative in the batch, ``mean(relu(d(a, p) - d(a, n) + margin))`` with Euclidean ``d``.
    Anchors without a positive or without a negative in the batch are left out."""
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    dist = diff.square().sum(-1).clamp_min(1e-12).sqrt()  # clamp: sqrt's gradient at 0 is infinite
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(1)
    hardest_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).amin(1)
    valid = positive.any(1) & ~same.all(1)
    if not bool(valid.any()):
        raise InputError(f"a triplet term needs a batch with 2 images of one person and another person; got "
                         f"labels {labels.tolist()}; train with the identity sampler (train.sampling.IdentityBatches)")
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class JLMLLoss(nn.Module):
    """Weighted identity losses per the config, plus the sparsity terms when ``cfg.sparsity`` and the
    triplet term (on ``features``' served unit embedding) when ``cfg.triplet_weight > 0``.

    Returns named terms for logging and their weighted sum under ``"total"``.
    """

    def __init__(self, cfg: JLMLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = {"global": cfg.global_weight, "local": cfg.local_weight, "joint": 1.0}

    def forward(self, model: JLML, logits: dict[str, Tensor], labels: Tensor,
                features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=labels.device)
        for name, out in logits.items():
            terms[f"ce_{name}"] = F.cross_entropy(out.float(), labels, label_smoothing=self.cfg.label_smoothing)
            total = total + self.weights[name] * terms[f"ce_{name}"]
        if self.cfg.sparsity:
            for name, weight in model.feature_weights().items():
                if name == "global":
                    terms["l21_global"] = group_lasso_l21(weight)
                    total = total + self.cfg.lambda_global * terms["l21_global"]
                else:
                    terms["l12_local"] = exclusive_lasso_l12(weight, self.cfg.stripes)
                    total = total + self.cfg.lambda_local * terms["l12_local"]
        if self.cfg.triplet_weight > 0:
            if features is None:
                raise InputError("the triplet term needs the branch features: pass features=model.forward_features(...)")
            terms["triplet"] = batch_hard_triplet(model.embed_features(features), labels, self.cfg.triplet_margin)
            total = total + self.cfg.triplet_weight * terms["triplet"]
        terms["total"] = total
        return terms

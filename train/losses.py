"""JLML's multi-loss objective: one identity cross-entropy per branch plus structured sparsity.

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


class JLMLLoss(nn.Module):
    """Weighted identity losses per the config, plus the sparsity terms when ``cfg.sparsity``.

    Returns named terms for logging and their weighted sum under ``"total"``.
    """

    def __init__(self, cfg: JLMLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = {"global": cfg.global_weight, "local": cfg.local_weight, "joint": 1.0}

    def forward(self, model: JLML, logits: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
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
        terms["total"] = total
        return terms

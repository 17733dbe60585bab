"""The one frozen description of a JLML network, its losses and its ablation switches.

Passed explicitly to the model, the loss and the training loop (no global config, no registry) and
stored inside every checkpoint, so a checkpoint rebuilds exactly the network that wrote it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.errors import InputError
from engine.spec import IMAGENET_MEAN, IMAGENET_STD

from .backbones import mobilenetv2_channels, mobilenetv2_stride

BRANCHES = ("both", "global", "local")
BACKBONES = ("resnet", "mobilenetv2")
LOSSES = ("per_branch", "single")
STEM_STRIDE = 2  # the stem conv halves H and W; the shared stage keeps that resolution


@dataclass(frozen=True)
class JLMLConfig:
    """Architecture, loss and ablation settings of a JLML model.

    Layout: stem conv (stride 2) + stage 0 are the low-level layers shared by both branches
    (``shared_layers``); stages 1.. (stride 2 each) form the global branch on the whole map and, with
    their own weights, each of the ``stripes`` local streams on one horizontal stripe of the map.
    The paper's "ResNet39" depth is not known exactly, hence ``widths``/``blocks`` are settings; the
    defaults train on a 2-core CPU in minutes.
    """

    height: int = 160                    # input image height (pixels)
    width: int = 64                      # input image width (pixels)
    stripes: int = 4                     # m: horizontal stripes of the local branch
    widths: tuple[int, ...] = (32, 64, 128, 256)   # channels per stage; stage 0 is shared
    blocks: tuple[int, ...] = (1, 1, 1, 1)          # residual blocks per stage
    feat_dim: int = 512                  # per-branch feature size (embedding = 2x for "both")
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dropout: float = 0.3                 # before the feature layers and the classifiers
    global_weight: float = 1.0           # weight of the global branch's identity loss
    local_weight: float = 1.0            # weight of the local branch's identity loss
    label_smoothing: float = 0.0         # cross-entropy label smoothing
    # Batch-hard triplet term on the served embedding (unit vectors), beside the identity losses; > 0
    # also switches training to identity batches (batch_size / 2 people x 2 images, across cameras).
    triplet_weight: float = 0.0
    triplet_margin: float = 0.3          # margin of the triplet term, in unit-vector L2 distance
    lambda_global: float = 1e-4          # group LASSO (L2,1) on the global feature layer
    # The exclusive lasso squares an L1 norm over tens of thousands of weights, so its scale is ~1e8
    # larger than the L2,1 term at initialisation; its lambda is correspondingly small.
    lambda_local: float = 1e-9           # exclusive group LASSO (L1,2) on the local feature layer
    branches: str = "both"               # ablation: "both", "global" or "local"
    loss: str = "per_branch"             # "per_branch" or "single" (one classifier on the concat)
    sparsity: bool = True                # ablation: add the two structured-sparsity terms
    shared_layers: bool = True           # False: each branch gets its own copy of stem + stage 0
    # Backbone: "resnet" (the from-scratch residual JLML above) or "mobilenetv2" (torchvision layout,
    # train/backbones.py): features[:split] are the shared low-level layers, a copy of
    # features[split:last_layer + 1] is each branch stream (global, and every local stripe); widths
    # and blocks then do not apply.
    backbone: str = "resnet"
    pretrained: str = ""                 # "" (random init), "imagenet" (bundled) or a state-dict path
    split: int = 7                       # mobilenetv2: first feature index of the branch streams
    last_layer: int = 18                 # mobilenetv2: last feature index of the branch streams
    last_stride: int = 1                 # mobilenetv2: stride of features.14 (re-id usually uses 1)
    freeze: int = 0                      # mobilenetv2: features[:freeze] are frozen (weights and BN)
    trunk_lr: float = 1.0                # learning-rate factor of the pre-trained layers
    bnneck: bool = False                 # BatchNorm1d after each feature layer (classifier + embedding)
    flip_test: bool = False              # embedding = mean of the image's and its mirror's features

    def __post_init__(self) -> None:
        for name in ("widths", "blocks", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = self._problems()
        if problems:
            raise InputError("invalid JLMLConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        p = []
        p += self._backbone_problems()
        if p:
            return p
        split = self.trunk_stride * self.stripes
        if self.stripes < 1 or self.height <= 0 or self.width <= 0 or self.height % split:
            p.append(f"height={self.height} stripes={self.stripes} (need height divisible by "
                     f"{self.trunk_stride}*stripes={split} so stripes are equal; change --stripes or --height)")
        if len(self.widths) < 2 or len(self.widths) != len(self.blocks):
            p.append(f"widths {self.widths} / blocks {self.blocks} (need >= 2 stages, same length)")
        if min(self.widths, default=0) < 1 or min(self.blocks, default=0) < 1:
            p.append(f"widths {self.widths} / blocks {self.blocks} (need positive values)")
        if self.feat_dim < 1:
            p.append(f"feat_dim {self.feat_dim} (need >= 1)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            p.append(f"mean {self.mean} / std {self.std} (need 3 values, std > 0)")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            p.append(f"dropout {self.dropout} / label_smoothing {self.label_smoothing} (need [0, 1))")
        if min(self.global_weight, self.local_weight, self.lambda_global, self.lambda_local,
               self.triplet_weight, self.triplet_margin) < 0:
            p.append("loss weights, lambdas and the triplet margin must be >= 0")
        if self.branches not in BRANCHES:
            p.append(f"branches {self.branches!r} (need one of {BRANCHES})")
        if self.loss not in LOSSES:
            p.append(f"loss {self.loss!r} (need one of {LOSSES})")
        return p

    def _backbone_problems(self) -> list[str]:
        if self.backbone not in BACKBONES:
            return [f"backbone {self.backbone!r} (need one of {BACKBONES})"]
        if self.trunk_lr < 0:
            return [f"trunk_lr {self.trunk_lr} (need >= 0)"]
        if self.backbone == "resnet":
            changed = [k for k in ("pretrained", "freeze") if getattr(self, k)]
            return [f"{changed} apply to backbone='mobilenetv2' only"] if changed else []
        if not 1 <= self.split <= self.last_layer <= 18 or not 0 <= self.freeze <= self.split:
            return [f"split={self.split} last_layer={self.last_layer} freeze={self.freeze} (need "
                    "0 <= freeze <= split <= last_layer <= 18, split >= 1)"]
        if self.last_stride not in (1, 2):
            return [f"last_stride {self.last_stride} (need 1 or 2)"]
        return []

    @property
    def trunk_stride(self) -> int:
        """Total stride of the shared low-level layers (stripes are cut on their output map)."""
        if self.backbone == "mobilenetv2":
            return mobilenetv2_stride(self.split)
        return STEM_STRIDE

    @property
    def stream_channels(self) -> int:
        """Channels of a branch stream's output map (the feature layer's input per stream)."""
        if self.backbone == "mobilenetv2":
            return mobilenetv2_channels(self.last_layer)
        return self.widths[-1]

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The branches this model builds, in the order their features are concatenated."""
        return ("global", "local") if self.branches == "both" else (self.branches,)

    @property
    def embedding_dim(self) -> int:
        return self.feat_dim * len(self.branch_names)

    def replace(self, **changes: Any) -> JLMLConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JLMLConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"unknown JLMLConfig fields {unknown}; known fields are {sorted(known)} "
                "(was this written by a newer jlml-engine? upgrade, or drop those keys)"
            )
        return cls(**data)

    def diff(self, other: JLMLConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as ``{name: (self_value, other_value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

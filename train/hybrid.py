"""The served matcher: JLML, LOMO + XQDA, or both fused into one unit embedding matched by plain L2.

``HybridMatcher`` is a model part like JLML itself: uint8 NHWC pixels in, float32 unit vectors out, so
export, every backend, the gallery and the server serve it unchanged. Its embedding is

    normalise([a * JLML(x), b * (LOMO(x) @ P - c)])

where ``P`` and ``c`` are XQDA's linear map and training mean (``train.xqda``: ``||(x - z) P||^2`` is
XQDA's distance) and JLML(x) is JLML's own unit embedding. ``a = 0`` and no JLML is LOMO + XQDA
alone. ``b = t / s``: ``s`` is the root-mean-square norm of the XQDA embeddings of the training images,
so ``t`` is the metric part's share against the JLML part's norm of 1; ``t`` is chosen on held-out
training people (``train.fusion``), never on the test split.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import CheckpointError, InputError
from engine.spec import ModelSpec

from .lomo import LOMO, LOMOConfig
from .model import JLML
from .xqda import XQDAMap

MATCHERS = ("jlml", "lomo_xqda", "fused")


class HybridMatcher(nn.Module):
    """[a * JLML, b * XQDA(LOMO)] normalised as a whole (see module docstring); ``jlml`` None: LOMO + XQDA."""

    def __init__(self, jlml: JLML | None, lomo_cfg: LOMOConfig, spec: ModelSpec, metric: XQDAMap,
                 weights: tuple[float, float]) -> None:
        super().__init__()
        a, b = (float(w) for w in weights)
        if a < 0 or b <= 0 or (jlml is None) != (a == 0):
            raise InputError(f"fusion weights (a={a}, b={b}) with{'out' if jlml is None else ''} a JLML part; "
                             "need b > 0, and a > 0 exactly when there is a JLML network")
        self.jlml, self.weights, self.base_spec = jlml, (a, b), spec
        self.lomo = LOMO(lomo_cfg, spec.height, spec.width)
        if metric.projection.shape[0] != self.lomo.dim:
            raise InputError(f"XQDA map takes {metric.projection.shape[0]}-D descriptors, LOMO at "
                             f"{spec.height}x{spec.width} gives {self.lomo.dim}-D; fit it on this input size")
        self.register_buffer("projection", torch.as_tensor(metric.projection, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor(metric.center, dtype=torch.float32))
        self.register_buffer("eigenvalues", torch.as_tensor(metric.eigenvalues, dtype=torch.float32))

    @property
    def kind(self) -> str:
        return "lomo_xqda" if self.jlml is None else "fused"

    @property
    def parts(self) -> dict[str, int]:
        """Embedding layout: part name -> its number of dimensions, in order."""
        jlml = {"jlml": self.jlml.cfg.embedding_dim} if self.jlml is not None else {}
        return {**jlml, "lomo_xqda": int(self.projection.shape[1])}

    @property
    def spec(self) -> ModelSpec:
        return self.base_spec.replace(embedding_dim=sum(self.parts.values()),
                                      extra={"matcher": self.describe()})

    def describe(self) -> dict[str, Any]:
        """What the artefact's spec records: the kind, the parts and their weights."""
        return {"kind": self.kind, "parts": self.parts, "weights": list(self.weights),
                "lomo": self.lomo.cfg.to_dict(), "lomo_dim": self.lomo.dim}

    def metric_only(self) -> HybridMatcher:
        """The LOMO + XQDA part alone (its own unit embedding), sharing this matcher's map."""
        metric = XQDAMap(projection=self.projection.double().cpu().numpy(), center=self.center.double().cpu().numpy(),
                         eigenvalues=self.eigenvalues.double().cpu().numpy())
        return HybridMatcher(None, self.lomo.cfg, self.base_spec, metric, (0.0, self.weights[1])).eval()

    def metric_embedding(self, images: Tensor) -> Tensor:
        """The centred XQDA embedding (N, r) in float32, unscaled: ``||.||^2`` differences are XQDA's."""
        descriptor = self.lomo(images).to(self.projection.dtype)
        return (descriptor @ self.projection - self.center).to(torch.float32)

    def forward(self, images: Tensor) -> Tensor:
        a, b = self.weights
        parts = [b * self.metric_embedding(images)]
        if self.jlml is not None:
            parts.insert(0, a * self.jlml(images))
        return F.normalize(torch.cat(parts, dim=1), p=2.0, dim=1, eps=1e-12)

    # ---- checkpoint record ------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """Everything but the JLML weights (which the checkpoint holds already), as plain values and tensors."""
        return {"kind": self.kind, "weights": list(self.weights), "lomo": self.lomo.cfg.to_dict(),
                "spec": self.base_spec.to_dict(), "projection": self.projection.detach().float().cpu(),
                "center": self.center.detach().float().cpu(),
                "eigenvalues": self.eigenvalues.detach().float().cpu()}

    @classmethod
    def from_record(cls, record: dict[str, Any], jlml: JLML | None) -> HybridMatcher:
        try:
            metric = XQDAMap(projection=np.asarray(record["projection"], np.float64),
                             center=np.asarray(record["center"], np.float64),
                             eigenvalues=np.asarray(record["eigenvalues"], np.float64))
            return cls(jlml if record["kind"] == "fused" else None, LOMOConfig.from_dict(record["lomo"]),
                       ModelSpec.from_dict(record["spec"]), metric, tuple(record["weights"]))
        except (KeyError, TypeError, InputError) as exc:
            raise CheckpointError(f"the checkpoint's matcher record does not rebuild a matcher ({exc}); it "
                                  "was written by another jlml-engine version, refit it") from exc

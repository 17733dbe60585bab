"""The served matcher: JLML, a hand-crafted descriptor + XQDA, or both fused into one unit embedding (plain L2).

``HybridMatcher`` is a model part like JLML itself: uint8 NHWC pixels in, float32 unit vectors out, so
export, every backend, the gallery and the server serve it unchanged. Its embedding is

    normalise([a * JLML(x), b * (D(x) @ P - c)])

where ``D`` is the hand-crafted descriptor (``train.descriptor``: LOMO for "lomo_xqda" and "fused", GOG
with LOMO for "gog_xqda" and "gog_fused"), ``P`` and ``c`` are XQDA's linear map and training mean
(``train.xqda``: ``||(x - z) P||^2`` is XQDA's distance) and JLML(x) is JLML's own unit embedding.
``a = 0`` and no JLML is the descriptor + XQDA alone. ``b = t / s``: ``s`` is the root-mean-square norm of the XQDA embeddings of the training images,
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

from .descriptor import HandCrafted
from .gog import GOGConfig
from .lomo import LOMO, LOMOConfig
from .model import JLML
from .xqda import XQDAMap

MATCHERS = ("jlml", "lomo_xqda", "gog_xqda", "fused", "gog_fused")
DESCRIPTOR_OF = {"lomo_xqda": "lomo", "fused": "lomo", "gog_xqda": "gog+lomo", "gog_fused": "gog+lomo"}
FUSED = ("fused", "gog_fused")


class HybridMatcher(nn.Module):
    """[a * JLML, b * XQDA(D)] normalised as a whole (see module docstring); ``jlml`` None: D + XQDA.
    ``means``: the descriptor's block means (``train.descriptor``; "gog+lomo" only)."""

    def __init__(self, jlml: JLML | None, lomo_cfg: LOMOConfig, spec: ModelSpec, metric: XQDAMap,
                 weights: tuple[float, float], *, descriptor: str = "lomo", gog_cfg: GOGConfig | None = None,
                 means: np.ndarray | None = None) -> None:
        super().__init__()
        a, b = (float(w) for w in weights)
        if a < 0 or b <= 0 or (jlml is None) != (a == 0):
            raise InputError(f"fusion weights (a={a}, b={b}) with{'out' if jlml is None else ''} a JLML part; "
                             "need b > 0, and a > 0 exactly when there is a JLML network")
        self.jlml, self.weights, self.base_spec = jlml, (a, b), spec
        self.descriptor = HandCrafted(descriptor, lomo_cfg, gog_cfg, spec.height, spec.width)
        self.descriptor.use_means(means)
        if metric.projection.shape[0] != self.descriptor.dim:
            raise InputError(f"XQDA map takes {metric.projection.shape[0]}-D descriptors, {descriptor} at "
                             f"{spec.height}x{spec.width} gives {self.descriptor.dim}-D; fit it on this input size")
        self.register_buffer("projection", torch.as_tensor(metric.projection, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor(metric.center, dtype=torch.float32))
        self.register_buffer("eigenvalues", torch.as_tensor(metric.eigenvalues, dtype=torch.float32))

    @property
    def lomo(self) -> LOMO:
        return self.descriptor.lomo

    @property
    def kind(self) -> str:
        gog = self.descriptor.kind == "gog+lomo"
        if self.jlml is None:
            return "gog_xqda" if gog else "lomo_xqda"
        return "gog_fused" if gog else "fused"

    @property
    def metric_part(self) -> str:
        return "gog_xqda" if self.descriptor.kind == "gog+lomo" else "lomo_xqda"

    @property
    def parts(self) -> dict[str, int]:
        """Embedding layout: part name -> its number of dimensions, in order."""
        jlml = {"jlml": self.jlml.cfg.embedding_dim} if self.jlml is not None else {}
        return {**jlml, self.metric_part: int(self.projection.shape[1])}

    @property
    def spec(self) -> ModelSpec:
        return self.base_spec.replace(embedding_dim=sum(self.parts.values()),
                                      extra={"matcher": self.describe()})

    def describe(self) -> dict[str, Any]:
        """What the artefact's spec records: the kind, the parts and their weights."""
        return {"kind": self.kind, "parts": self.parts, "weights": list(self.weights),
                "lomo_dim": self.lomo.dim, **self.descriptor.describe()}

    def metric_only(self) -> HybridMatcher:
        """The descriptor + XQDA part alone (its own unit embedding), sharing this matcher's map."""
        metric = XQDAMap(projection=self.projection.double().cpu().numpy(), center=self.center.double().cpu().numpy(),
                         eigenvalues=self.eigenvalues.double().cpu().numpy())
        return HybridMatcher(None, self.lomo.cfg, self.base_spec, metric, (0.0, self.weights[1]),
                             **self.descriptor.matcher_args()).eval()

    def metric_embedding(self, images: Tensor) -> Tensor:
        """The centred XQDA embedding (N, r) in float32, unscaled: ``||.||^2`` differences are XQDA's."""
        descriptor = self.descriptor(images).to(self.projection.dtype)
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
                "eigenvalues": self.eigenvalues.detach().float().cpu(), "descriptor": self.descriptor.kind,
                **({"gog": self.descriptor.gog_cfg.to_dict(), "means": self.descriptor.means.detach().float().cpu()}
                   if self.descriptor.gog is not None else {})}

    @classmethod
    def from_record(cls, record: dict[str, Any], jlml: JLML | None) -> HybridMatcher:
        try:
            metric = XQDAMap(projection=np.asarray(record["projection"], np.float64),
                             center=np.asarray(record["center"], np.float64),
                             eigenvalues=np.asarray(record["eigenvalues"], np.float64))
            gog = record.get("gog")
            return cls(jlml if record["kind"] in FUSED else None, LOMOConfig.from_dict(record["lomo"]),
                       ModelSpec.from_dict(record["spec"]), metric, tuple(record["weights"]),
                       descriptor=record.get("descriptor", "lomo"),
                       gog_cfg=None if gog is None else GOGConfig.from_dict(gog),
                       means=None if gog is None else np.asarray(record["means"], np.float64))
        except (KeyError, TypeError, InputError) as exc:
            raise CheckpointError(f"the checkpoint's matcher record does not rebuild a matcher ({exc}); it "
                                  "was written by another jlml-engine version, refit it") from exc

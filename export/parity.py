"""Measured parity of exported graphs against the PyTorch model they came from.

Three figures per graph on one sample batch: the minimum per-row cosine (the threshold that gates the
build), the maximum absolute difference, and top-k neighbour agreement inside the batch (what re-id
ranking actually sees). Agreement is tie-aware: a neighbour whose reference score ties the k-th best
within ``tie_tol`` is as good as any other, so swaps between equal scores are not counted as errors.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.atomic import write_text
from engine.errors import InputError, ParityError
from engine.images import load_images
from engine.spec import ModelSpec

from ._ort import ort_embed

if TYPE_CHECKING:
    import torch

# Minimum per-row cosine against the FP32 PyTorch model, per graph precision.
COSINE_THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999}
DEFAULT_K = 5
DEFAULT_SAMPLES = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class ParityResult:
    """Parity figures of one graph; ``passed`` says whether ``min_cosine`` met ``threshold``."""

    graph: str
    min_cosine: float
    max_abs_diff: float
    topk_agreement: float
    k: int
    threshold: float
    samples: int

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def line(self) -> str:
        return (f"{self.graph}: min cosine {self.min_cosine:.7f} (>= {self.threshold}), max |diff| "
                f"{self.max_abs_diff:.2e}, top-{self.k} agreement {self.topk_agreement:.4f} "
                f"on {self.samples} images")


def sample_images(spec: ModelSpec, image_dir: str | os.PathLike[str] | None = None, *,
                  count: int = DEFAULT_SAMPLES, seed: int = 0) -> np.ndarray:
    """Up to ``count`` images from ``image_dir`` resized to the spec, or random uint8 pixels."""
    if image_dir is None:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (count, *spec.image_shape), dtype=np.uint8)
    folder = Path(image_dir)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count] \
        if folder.is_dir() else []
    if len(paths) < 2:
        raise InputError(
            f"--sample-images {folder} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}), expected "
            "a folder with at least 2; point it at a folder of person crops or leave it out"
        )
    images, _ = load_images(paths, spec.height, spec.width, on_error="raise")
    return images


def cosine_rows(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (float64) of two (N, D) arrays."""
    ref, got = reference.astype(np.float64), test.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return np.einsum("nd,nd->n", ref, got) / np.maximum(norms, np.finfo(np.float64).tiny)


def topk_agreement(reference: np.ndarray, test: np.ndarray, k: int, *, tie_tol: float = 1e-6) -> float:
    """Fraction of each row's top-k neighbours (others in the batch) that the reference also ranks top-k.

    A neighbour chosen by ``test`` counts when its reference similarity is at least the reference's
    k-th best minus ``tie_tol``, so equal-score swaps are not disagreements.
    """
    n = len(reference)
    if n < 2 or reference.shape != test.shape:
        raise InputError(f"need two (N>=2, D) arrays of one shape, got {reference.shape} and {test.shape}")
    k = min(k, n - 1)
    ref_sim, test_sim = _self_excluded_sims(reference), _self_excluded_sims(test)
    kth_best = -np.sort(-ref_sim, axis=1)[:, k - 1]
    chosen = np.argsort(-test_sim, axis=1, kind="stable")[:, :k]
    agree = np.take_along_axis(ref_sim, chosen, axis=1) >= kth_best[:, None] - tie_tol
    return float(agree.mean())


def _self_excluded_sims(emb: np.ndarray) -> np.ndarray:
    sims = emb.astype(np.float64) @ emb.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    return sims


def compare(graph: str, reference: np.ndarray, test: np.ndarray, *, threshold: float,
            k: int = DEFAULT_K) -> ParityResult:
    """Parity figures of ``test`` embeddings against ``reference`` embeddings of the same images."""
    if reference.shape != test.shape:
        raise ParityError(f"{graph} returned shape {test.shape}, the PyTorch model {reference.shape}")
    return ParityResult(
        graph=graph, min_cosine=float(cosine_rows(reference, test).min()),
        max_abs_diff=float(np.abs(reference.astype(np.float64) - test).max()),
        topk_agreement=topk_agreement(reference, test, k), k=min(k, len(reference) - 1),
        threshold=threshold, samples=len(reference),
    )


def measure_parity(model: torch.nn.Module, graphs: Mapping[str, str | os.PathLike[str]],
                   images: np.ndarray, *, k: int = DEFAULT_K,
                   thresholds: Mapping[str, float] = COSINE_THRESHOLDS) -> list[ParityResult]:
    """Run each ONNX graph (``{"fp32": path, "fp16": path}``) on ONNX Runtime against the FP32 model."""
    import torch

    unknown = sorted(set(graphs) - set(thresholds))
    if unknown:
        raise InputError(f"no parity threshold for graphs {unknown}; known: {sorted(thresholds)}")
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(images)).float().numpy()
    return [compare(name, reference, ort_embed(path, images), threshold=thresholds[name], k=k)
            for name, path in graphs.items()]


def measure_plan_parity(model: torch.nn.Module, folder: str | os.PathLike[str], precision: str,
                        images: np.ndarray, *, k: int = DEFAULT_K,
                        thresholds: Mapping[str, float] = COSINE_THRESHOLDS) -> ParityResult:
    """Run the folder's TensorRT plan through the engine's own TensorRT backend against the FP32 model.

    The plan is what the engine will serve, so it is measured the way it is served (``Embedder``,
    backend "trt"), on the same images and thresholds as the ONNX graph of its precision.
    """
    import torch

    from engine.embedder import Embedder

    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(images)).float().numpy()
    with Embedder(folder, backend="trt", precision=precision) as embed:
        served = embed(images)
    return compare("plan", reference, served, threshold=thresholds[precision], k=k)


def check_parity(results: Sequence[ParityResult]) -> None:
    """Raise ParityError naming every graph below its threshold."""
    failed = [r for r in results if not r.passed]
    if failed:
        raise ParityError(
            "parity below threshold: " + "; ".join(r.line() for r in failed)
            + "; the exported graph does not reproduce the PyTorch model, nothing was published"
        )


def write_parity(path: str | os.PathLike[str], results: Sequence[ParityResult],
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``parity.json``: one entry per graph with its figures and verdict, plus ``extra`` facts."""
    graphs = {r.graph: {**asdict(r), "passed": r.passed} for r in results}
    return write_text(path, json.dumps({**(extra or {}), "graphs": graphs}, indent=2, sort_keys=True) + "\n")

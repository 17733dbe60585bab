"""Measured parity of an exported artefact against the PyTorch model it came from, on the served path.

Each graph (and the TensorRT plan) is run through ``engine.Embedder`` on the staged artefact folder,
exactly as it will be served, and compared with the FP32 model by ``engine.parity`` (minimum per-row
cosine, which gates the build; maximum absolute difference; tie-aware top-k agreement).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.atomic import write_text
from engine.embedder import Embedder
from engine.errors import InputError, ParityError
from engine.images import IMAGE_SUFFIXES, list_images, load_images
from engine.parity import DEFAULT_K, ParityResult, compare
from engine.spec import ModelSpec

if TYPE_CHECKING:
    import torch

# Minimum per-row cosine against the FP32 PyTorch model, per precision.
COSINE_THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999}
DEFAULT_SAMPLES = 32


def image_files(folder: str | os.PathLike[str], count: int | None = None) -> list[Path]:
    """The first ``count`` (None: all) image files under ``folder``, sorted; none when it is no folder."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    return paths[:count]


def sample_images(spec: ModelSpec, image_dir: str | os.PathLike[str] | None = None, *,
                  count: int = DEFAULT_SAMPLES, seed: int = 0, flag: str = "--sample-images") -> np.ndarray:
    """Up to ``count`` images from ``image_dir`` resized to the spec, or random uint8 pixels; ``flag``
    is the option that named the folder, for the message when it holds fewer than 2 images."""
    if image_dir is None:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (count, *spec.image_shape), dtype=np.uint8)
    paths = image_files(image_dir, count)
    if len(paths) < 2:
        raise InputError(
            f"{flag} {image_dir} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}), expected "
            "a folder with at least 2; point it at a folder of person crops"
            + (" or leave it out" if flag == "--sample-images" else "")
        )
    images, _ = load_images(paths, spec.height, spec.width, on_error="raise")
    return images


def parity_samples(spec: ModelSpec, sample_dir: str | os.PathLike[str] | None,
                   data_root: str | os.PathLike[str] | None, *, count: int = DEFAULT_SAMPLES,
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The images parity is measured on, and what they are (parity.json's ``images``): the crops of
    ``sample_dir`` (--sample-images); else crops spread over the data the checkpoint was trained on
    (``data_root``, when that folder is here); else random pixels, and the record says so and why."""
    if sample_dir is not None:
        images = sample_images(spec, sample_dir, count=count)
        return images, {"kind": "crops", "from": "--sample-images", "folder": str(sample_dir), "count": len(images)}
    if data_root is not None and Path(data_root).is_dir():
        paths = list_images(data_root)
        picked = sorted({paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)})
        images, _ = load_images(picked, spec.height, spec.width, on_error="skip")
        return images, {"kind": "crops", "from": "the checkpoint's training data", "folder": str(data_root),
                        "count": len(images)}
    why = ("the checkpoint records no data folder" if data_root is None
           else f"its data folder {data_root} is not here")
    return sample_images(spec, None, count=count), {
        "kind": "random uint8", "from": f"no --sample-images and {why}", "folder": None, "count": count}


def reference_embeddings(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The FP32 PyTorch model's embeddings of ``images``: what every served artefact is compared with."""
    import torch

    with torch.no_grad():
        return np.asarray(model.eval()(torch.from_numpy(images)).float().numpy())


def measure_parity(reference: np.ndarray, folder: str | os.PathLike[str],
                   targets: Mapping[str, tuple[str, str]], images: np.ndarray, *, k: int = DEFAULT_K,
                   thresholds: Mapping[str, float] = COSINE_THRESHOLDS) -> list[ParityResult]:
    """Serve ``images`` from ``folder`` through ``Embedder`` for each ``name -> (backend, precision)``
    and compare with ``reference`` at the threshold of that precision.

    ONNX Runtime runs on the CPU here: the graph is what is measured, not a GPU's TF32 choices.
    """
    unknown = sorted({precision for _, precision in targets.values()} - set(thresholds))
    if unknown:
        raise InputError(f"no parity threshold for precisions {unknown}; known: {sorted(thresholds)}")
    results = []
    for name, (backend, precision) in targets.items():
        device = "cpu" if backend == "ort" else "auto"
        with Embedder(folder, backend=backend, device=device, precision=precision) as embed:
            served = embed(images)
        results.append(compare(name, reference, served, threshold=thresholds[precision], k=k))
    return results


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

"""Conformance: every backend available here gives the PyTorch reference's answers through Embedder.

Cases not runnable here (CUDA, TensorRT) are skipped with the reason, never passed silently.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.backends.trt import available as trt_available
from engine.embedder import Embedder
from engine.spec import PLAN_FILE

torch = pytest.importorskip("torch")


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def _skip_reason(backend: str, device: str) -> str | None:
    if backend == "ort" and not _ort_providers():
        return "onnxruntime is not installed (pip install 'jlml-engine[ort]')"
    if backend == "ort" and device == "cuda" and "CUDAExecutionProvider" not in _ort_providers():
        return "onnxruntime has no CUDAExecutionProvider here (pip install 'jlml-engine[ort-gpu]')"
    if backend == "torch" and device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    if backend == "trt":
        ok, why = trt_available()
        return None if ok else why
    return None


# (backend, device, precision, min cosine vs the fp32 reference)
CASES = [
    ("ort", "cpu", "fp32", 0.99999),
    ("ort", "cpu", "fp16", 0.999),
    ("torch", "cpu", "fp32", 0.99999),
    ("ort", "cuda", "fp32", 0.99999),
    ("ort", "cuda", "fp16", 0.999),
    ("torch", "cuda", "fp32", 0.99999),
    ("torch", "cuda", "fp16", 0.999),
    ("trt", "cuda", "fp32", 0.99999),
    ("trt", "cuda", "fp16", 0.999),
]
SIZES = [1, 7, 64, 150]  # the tiny spec's max_batch is 64: 150 is split into 64 + 64 + 22


def topk_agrees(got: np.ndarray, ref: np.ndarray, k: int, tol: float) -> bool:
    """Each row's top-k neighbours in ``got`` are top-k in ``ref`` up to ties within ``tol``."""
    n = len(ref)
    k = min(k, n - 1)
    if k < 1:
        return True
    ref_sim, got_sim = ref @ ref.T, got @ got.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(got_sim, -np.inf)
    kth_best = np.sort(ref_sim, axis=1)[:, -k]
    chosen = np.argsort(-got_sim, axis=1, kind="stable")[:, :k]
    return bool(np.all(np.take_along_axis(ref_sim, chosen, axis=1) >= kth_best[:, None] - tol))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("backend", "device", "precision", "min_cos"), CASES,
                         ids=[f"{b}-{d}-{p}" for b, d, p, _ in CASES])
def test_conformance(artifact_dir, tiny_module, make_images, reference, backend, device, precision,
                     min_cos, size):
    reason = _skip_reason(backend, device)
    if reason:
        pytest.skip(reason)
    if backend == "trt" and not (artifact_dir / PLAN_FILE).is_file():
        pytest.skip("the fixture folder has no TensorRT plan (export/ builds model.plan)")
    images = make_images(size, seed=size)
    module = tiny_module if backend == "torch" else None
    with Embedder(artifact_dir, backend=backend, device=device, precision=precision, module=module) as emb:
        got = emb(images)
    ref = reference(images)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= min_cos, f"worst row cosine {cosine.min():.6f} < {min_cos}"
    assert topk_agrees(got, ref, k=5, tol=1e-4 if precision == "fp32" else 2e-3)


def test_topk_agrees_catches_a_swapped_neighbour():
    ref = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]] + np.array([[0, 0, 0, 0], [0.1, 0, 0, 0],
                                                                [0, 0.5, 0, 0], [0, 0, 0.9, 0]])
    got = ref.copy()
    got[3] = ref[1]  # row 3 now looks like row 1: its nearest neighbours change
    assert topk_agrees(ref, ref, k=1, tol=0.0)
    assert not topk_agrees(got, ref, k=1, tol=0.0)

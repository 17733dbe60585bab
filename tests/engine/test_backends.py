"""Conformance: every backend available here gives the PyTorch reference's answers through Embedder.

Cases not runnable here (CUDA, TensorRT) are skipped with the reason, never passed silently.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import types

import numpy as np
import pytest

from engine.backends.ort import OrtBackend, providers_for
from engine.backends.plan_sidecar import PlanSidecar
from engine.backends.torch_backend import TorchBackend
from engine.backends.trt import TrtBackend, _device_index
from engine.backends.trt import available as trt_available
from engine.embedder import Embedder
from engine.errors import ArtifactError, BackendUnavailableError, InputError, SpecMismatchError
from engine.spec import ONNX_FP16_FILE, PLAN_SIDECAR_FILE, SPEC_FILE

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
def test_conformance(artifact_dir, plan_folder, tiny_module, make_images, reference, backend, device,
                     precision, min_cos, size):
    reason = _skip_reason(backend, device)
    if reason:
        pytest.skip(reason)
    folder = plan_folder(precision) if backend == "trt" else artifact_dir
    images = make_images(size, seed=size)
    module = tiny_module if backend == "torch" else None
    with Embedder(folder, backend=backend, device=device, precision=precision, module=module) as emb:
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


# ---- errors: each backend checks its input and its artefact -------------------------------------

def _copy(artifact_dir, tmp_path):
    folder = tmp_path / "artefact"
    shutil.copytree(artifact_dir, folder)
    return folder


def test_backend_checks_input_and_batch_range(artifact_dir, make_images):
    with OrtBackend(artifact_dir, device="cpu") as backend:
        with pytest.raises(InputError, match="1 to 64 images per call, got 65; use engine.embedder"):
            backend(make_images(65))
        with pytest.raises(InputError, match="got list"):
            backend(make_images(2).tolist())
        with pytest.raises(InputError, match=r"got int64 \(2, 32, 16, 3\)"):
            backend(make_images(2).astype(np.int64))
    with pytest.raises(InputError, match="closed"):
        backend(make_images(1))


def test_ort_refuses_a_replaced_onnx_file(artifact_dir, tmp_path, spec):
    folder = _copy(artifact_dir, tmp_path)
    spec.replace(onnx_sha256="0" * 64).save(folder / SPEC_FILE)
    with pytest.raises(SpecMismatchError, match="sha256 .* spec.json expects 000000000000"):
        OrtBackend(folder)


def test_ort_refuses_a_graph_with_other_tensor_names(artifact_dir, spec):
    with pytest.raises(SpecMismatchError, match=r"\('pixels', 'tensor\(uint8\)'\)"):
        OrtBackend(artifact_dir, spec.replace(input_name="pixels"))


def test_ort_missing_fp16_graph_and_unknown_precision(artifact_dir, tmp_path):
    folder = _copy(artifact_dir, tmp_path)
    (folder / ONNX_FP16_FILE).unlink()
    with pytest.raises(ArtifactError, match="no model.fp16.onnx .* precision 'fp16'"):
        OrtBackend(folder, precision="fp16")
    with pytest.raises(ArtifactError, match="no model.int8.onnx .* precision 'int8'"):
        OrtBackend(folder, precision="int8")  # exported without --int8
    with pytest.raises(InputError, match="precision 'int4' is not one of"):
        OrtBackend(folder, precision="int4")


def test_ort_device_choice():
    both, cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]
    assert providers_for("cpu", both) == [("CPUExecutionProvider", {})]
    assert providers_for("auto", cpu) == [("CPUExecutionProvider", {})]
    assert providers_for("cuda:1", both)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(BackendUnavailableError, match=r"jlml-engine\[ort-gpu\]"):
        providers_for("cuda:1", cpu)
    for wrong in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(InputError, match=f"{wrong!r} is not 'auto'"):
            providers_for(wrong, cpu)


@pytest.mark.parametrize(("module_name", "extra"), [("onnxruntime", "[ort]"), ("tensorrt", "[trt]")])
def test_missing_packages_name_the_extra(artifact_dir, monkeypatch, module_name, extra):
    monkeypatch.setitem(sys.modules, module_name, None)  # makes `import module_name` fail
    driver = types.ModuleType("pycuda.driver")  # pycuda present, so tensorrt is what is missing
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    opener = OrtBackend if module_name == "onnxruntime" else TrtBackend
    with pytest.raises(BackendUnavailableError, match=re.escape(f"pip install 'jlml-engine{extra}'")):
        opener(artifact_dir)
    if module_name == "tensorrt":
        ok, reason = trt_available()
        assert not ok and "jlml-engine[trt]" in reason


def test_trt_backend_runs_on_a_gpu_only():
    with pytest.raises(InputError, match="runs on a GPU"):
        _device_index("cpu")
    assert _device_index("cuda:2") == 2 and _device_index("auto") == 0


def test_torch_backend_errors(tiny_module, spec, make_images):
    with pytest.raises(InputError, match="needs an nn.Module, got str"):
        TorchBackend("model.pt", spec)
    with pytest.raises(InputError, match="'fp16' with the 'torch' backend needs a CUDA device"):
        TorchBackend(tiny_module, spec, device="cpu", precision="fp16")
    with pytest.raises(InputError, match="'gpu0' is not 'auto'"):
        TorchBackend(tiny_module, spec, device="gpu0")
    wrong = TorchBackend(tiny_module, spec.replace(embedding_dim=8), device="cpu")
    with wrong, pytest.raises(SpecMismatchError, match=r"shape \(2, 24\), the spec promises \(2, 8\)"):
        wrong(make_images(2))


# ---- the plan sidecar: checked before TensorRT sees the plan, so tested without TensorRT ----------

def _sidecar(spec, **changes):
    facts = dict(tensorrt_version="10.13.3.9", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                 onnx_sha256=spec.onnx_sha256, min_batch=1, opt_batch=16, max_batch=64, precision="fp32")
    return PlanSidecar(**{**facts, **changes})


HERE = dict(tensorrt_version="10.13.3.9", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))


def test_sidecar_that_fits_passes_and_round_trips(spec, tmp_path):
    sidecar = _sidecar(spec)
    sidecar.check(spec, **HERE, precision="fp32")
    sidecar.check(spec, **{**HERE, "compute_capability": "9.0"})
    assert sidecar.compute_capability == "9.0"
    assert PlanSidecar.load(sidecar.save(tmp_path / PLAN_SIDECAR_FILE)) == sidecar


@pytest.mark.parametrize(("field", "value"), [
    ("tensorrt_version", "11.4.0.106"),
    ("gpu_name", "NVIDIA H200"),
    ("compute_capability", "8.6"),
    ("onnx_sha256", "f" * 64),
    ("precision", "fp16"),
])
def test_sidecar_mismatch_names_the_field(spec, field, value):
    with pytest.raises(SpecMismatchError, match=f"{field}: plan has .*rebuild it on this machine"):
        _sidecar(spec, **{field: value}).check(spec, **HERE, precision="fp32")


def test_sidecar_file_problems(spec, tmp_path):
    with pytest.raises(ArtifactError, match="no plan sidecar"):
        PlanSidecar.load(tmp_path / PLAN_SIDECAR_FILE)
    (tmp_path / "bad.json").write_text(json.dumps({"gpu_name": "x", "builder": 1}))
    missing = r"missing fields \['compute_capability'.*unknown fields \['builder'\]"
    with pytest.raises(ArtifactError, match=missing):
        PlanSidecar.load(tmp_path / "bad.json")
    with pytest.raises(ArtifactError, match="min=8 opt=4"):
        _sidecar(spec, min_batch=8, opt_batch=4)


def test_trt_backend_checks_the_sidecar_first(artifact_dir, tmp_path):
    folder = _copy(artifact_dir, tmp_path)  # no sidecar: refused before any GPU or plan is touched
    driver = types.ModuleType("pycuda.driver")  # no init(): touching CUDA would fail the test
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9"))
        mp.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver))
        mp.setitem(sys.modules, "pycuda.driver", driver)
        with pytest.raises(ArtifactError, match="no plan sidecar"):
            TrtBackend(folder)

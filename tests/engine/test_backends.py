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

from engine.backends import BACKENDS, backend_class
from engine.backends import available as backend_available
from engine.backends.ort import OrtBackend, providers_for
from engine.backends.plan_sidecar import PlanSidecar
from engine.backends.torch_backend import TorchBackend
from engine.backends.trt import TrtBackend, _device_index
from engine.backends.trt import available as trt_available
from engine.embedder import Embedder
from engine.errors import ArtifactError, BackendUnavailableError, InputError, SpecMismatchError
from engine.parity import topk_agreement
from engine.spec import ONNX_FILE, ONNX_FP16_FILE, PLAN_SIDECAR_FILE, SPEC_FILE, file_sha256

torch = pytest.importorskip("torch")


def _skip_reason(backend: str, device: str) -> str | None:
    """The engine's own answer (the backend table), so the tests keep no second copy of the rules."""
    ok, why = backend_available(backend, device)
    return None if ok else why


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
    if size > 1:  # the project's one tie-aware top-k agreement (engine.parity)
        assert topk_agreement(ref, got, k=5, tie_tol=1e-4 if precision == "fp32" else 2e-3) == 1.0


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


def test_ort_refuses_a_replaced_fp16_graph(artifact_dir, tmp_path, spec):
    folder = _copy(artifact_dir, tmp_path)
    spec.replace(onnx_fp16_sha256=file_sha256(folder / ONNX_FP16_FILE)).save(folder / SPEC_FILE)
    OrtBackend(folder, precision="fp16").close()  # the recorded one is served
    (folder / ONNX_FP16_FILE).write_bytes((folder / ONNX_FILE).read_bytes())  # another export's file
    with pytest.raises(SpecMismatchError, match=r"model.fp16.onnx has sha256 .* \(onnx_fp16_sha256\)"):
        OrtBackend(folder, precision="fp16")


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
    assert providers_for("cuda:1", both)[0] == ("CUDAExecutionProvider", {"device_id": 1,
                                                                         "cudnn_conv_algo_search": "HEURISTIC"})
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
        mp.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9", Builder=object))
        mp.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver))
        mp.setitem(sys.modules, "pycuda.driver", driver)
        with pytest.raises(ArtifactError, match="no plan sidecar"):
            TrtBackend(folder)


# ---- ONNX Runtime on a GPU build: stand-in sessions that compute on the CPU and record the binding ----

def _gpu_ort(monkeypatch, *, cuda_loads: bool) -> list[tuple]:
    """Install an onnxruntime that offers CUDA; return the log of (session providers, bind_output args).

    Like the real one when the CUDA provider fails to load (missing cuDNN...), the session then silently
    runs on the CPU provider only.
    """
    real = pytest.importorskip("onnxruntime")
    log: list[tuple] = []

    class Binding:
        def __init__(self, session):
            self.session, self.feeds = session, {}

        def bind_cpu_input(self, name, array):
            self.feeds[name] = array

        def bind_output(self, *args):
            log.append(("bind_output", *args))

        def copy_outputs_to_cpu(self):
            return self.outputs

    class Session:
        def __init__(self, path, options, providers, provider_options):
            log.append(("session", tuple(providers), tuple(map(tuple, (o.items() for o in provider_options)))))
            self._real = real.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._providers = providers if cuda_loads else ["CPUExecutionProvider"]

        def get_providers(self):
            return list(self._providers)

        def get_inputs(self):
            return self._real.get_inputs()

        def get_outputs(self):
            return self._real.get_outputs()

        def io_binding(self):
            return Binding(self)

        def run_with_iobinding(self, binding):
            binding.outputs = self._real.run(None, binding.feeds)

    fake = types.SimpleNamespace(
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        InferenceSession=Session, SessionOptions=real.SessionOptions,
        GraphOptimizationLevel=real.GraphOptimizationLevel, ExecutionMode=real.ExecutionMode)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return log


def test_ort_binds_the_output_on_the_sessions_own_gpu(artifact_dir, monkeypatch, make_images, reference):
    log = _gpu_ort(monkeypatch, cuda_loads=True)
    images = make_images(3)
    with OrtBackend(artifact_dir, device="cuda:1") as backend:
        assert backend.device == "cuda:1"
        np.testing.assert_allclose(backend(images), reference(images), atol=1e-5)
    assert log[0][1] == ("CUDAExecutionProvider", "CPUExecutionProvider")
    # HEURISTIC: no exhaustive cuDNN search for each new batch size Triton's dynamic batcher forms
    assert log[0][2][0] == (("device_id", 1), ("cudnn_conv_algo_search", "HEURISTIC"))
    assert log[1] == ("bind_output", "embeddings", "cuda", 1)  # not "cuda" alone: that is device 0


def test_ort_refuses_a_silent_cpu_fallback_when_cuda_was_asked(artifact_dir, monkeypatch):
    _gpu_ort(monkeypatch, cuda_loads=False)
    with pytest.raises(BackendUnavailableError, match=r"'cuda' asked for, but onnxruntime's CUDA provider "
                                                      r"did not load .*\['CPUExecutionProvider'\]"):
        OrtBackend(artifact_dir, device="cuda")


def test_ort_auto_fallback_is_labelled_cpu(artifact_dir, monkeypatch, caplog, make_images):
    log = _gpu_ort(monkeypatch, cuda_loads=False)
    with Embedder(artifact_dir, backend="ort") as emb:
        assert emb.device == "cpu" and emb._backend.providers == ["CPUExecutionProvider"]
        emb(make_images(2))
    assert log[-1] == ("bind_output", "embeddings", "cpu")
    assert "runs on the CPU" in caplog.text


def test_an_empty_tensorrt_namespace_is_not_tensorrt(monkeypatch):
    """tensorrt-stubs leaves a `tensorrt/` folder that imports as an empty namespace package."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    ok, why = trt_available()
    assert not ok and "has no 'Builder'" in why and "jlml-engine[trt]" in why


def test_a_sidecar_never_holds_an_unknown_compute_capability(spec):
    with pytest.raises(ArtifactError, match="compute capability 'unknown' is not 'major.minor'"):
        _sidecar(spec, compute_capability="unknown")


# ---- one backend table, one device parser --------------------------------------------------------

def test_the_backend_table_names_every_backend_and_why_it_cannot_run():
    assert set(BACKENDS) == {"trt", "ort", "torch"} and backend_class("ort") is OrtBackend
    assert backend_available("ort", "cpu")[0] and backend_available("torch", "cpu")[0]
    if not torch.cuda.is_available():
        ok, why = backend_available("torch", "cuda")
        assert not ok and "sees no CUDA GPU" in why
    with pytest.raises(InputError, match="unknown backend 'onnx'"):
        backend_class("onnx")


def test_gallery_and_embedder_share_one_device_parser(artifact_dir):
    from engine.gallery import Gallery

    assert Gallery(8, device="auto").device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for wrong in ("gpu0", "cuda:x"):
        with pytest.raises(InputError, match=f"device {wrong!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            Gallery(8, device=wrong)
        with pytest.raises(InputError, match=f"device {wrong!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            Embedder(artifact_dir, backend="ort", device=wrong)


@pytest.mark.parametrize(("module", "extra"), [("onnxruntime", "[ort]"), ("tensorrt", "[trt]"),
                                                ("pycuda.driver", "[trt]"), ("onnxslim", "[simplify]")])
def test_one_optional_import_helper_names_the_extra(monkeypatch, module, extra):
    from engine.backends.optional import is_installed, optional_import

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailableError, match=re.escape(f"jlml-engine{extra}")):
        optional_import(module, needed_for="this test")
    assert not is_installed(module)

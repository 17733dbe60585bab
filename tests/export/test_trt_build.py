"""TensorRT builder: its call sequence, flags and error paths against recording stand-ins of TensorRT
10.x and 11.x (``_trt_standin``); real builds are marked ``trt`` and skip with the reason elsewhere."""
from __future__ import annotations

import json
import sys
import types

import onnx
import pytest
from _trt_standin import GPU_KEY, make_pycuda, make_tensorrt

from engine.backends.optional import is_installed
from engine.backends.plan_sidecar import PlanSidecar
from engine.errors import ArtifactError, BackendUnavailableError
from export import trt_build

HAS_TRT = is_installed("tensorrt", "Builder")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not importable (pip install 'jlml-engine[trt]' on a CUDA machine)")
GPU = trt_build.GpuIdentity("Fake GPU", "9.0", "12.8")
VERSIONS = ["10.13.3.9", "11.4.0.106"]


def _install(monkeypatch, version: str) -> types.ModuleType:
    trt = make_tensorrt(version)
    cuda = make_pycuda()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=cuda))
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return trt


@pytest.fixture(params=VERSIONS)
def standin(request, monkeypatch) -> types.ModuleType:
    """A stand-in TensorRT (10.x, then 11.x) and pycuda, installed as the real modules would be."""
    return _install(monkeypatch, request.param)


def _build(onnx_path, spec, *, fp16: bool, cache=None) -> dict:
    parsed = trt_build.network_from_onnx(onnx_path, spec)
    return json.loads(trt_build.serialize_engine(parsed, spec, workspace_mib=256, fp16=fp16, timing_cache=cache))


@pytest.mark.parametrize("graph", ["fp32_onnx", "fp16_onnx"])
def test_networks_are_strongly_typed_without_precision_flags(request, standin, graph, tiny_spec):
    """FP16 comes from the FP16 graph's types; TensorRT 10 refuses FP16 flags on such a network."""
    built = _build(request.getfixturevalue(graph), tiny_spec, fp16=graph == "fp16_onnx")
    assert built["strongly_typed"] and "FP16" not in built["flags"]
    strongly = 1 << int(standin.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly) in standin.calls
    assert not [c for c in standin.calls if c[0] == "set_flag"]
    shape = tuple(tiny_spec.image_shape)
    assert ("set_shape", "images", (1, *shape), (8, *shape), (64, *shape)) in standin.calls


def test_fp32_plans_clear_tf32(standin, fp32_onnx, fp16_onnx, tiny_spec):
    assert "TF32" not in _build(fp32_onnx, tiny_spec, fp16=False)["flags"]
    assert ("clear_flag", "TF32") in standin.calls
    # An FP16 plan's FP32 parts are preprocessing and normalisation (no convolutions): flag left alone.
    assert "TF32" in _build(fp16_onnx, tiny_spec, fp16=True)["flags"]


def test_tensorrt_11_has_no_fp16_flag_and_10_refuses_it_strongly_typed(monkeypatch, fp16_onnx, tiny_spec):
    assert not hasattr(_install(monkeypatch, "11.4.0.106").BuilderFlag, "FP16")
    trt = _install(monkeypatch, "10.13.3.9")
    parsed = trt_build.network_from_onnx(fp16_onnx, tiny_spec)
    config = parsed.builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(types.SimpleNamespace(shapes={"images": ()}))
    assert parsed.builder.build_serialized_network(parsed.network, config) is None
    assert "not allowed with strongly typed" in parsed.messages[-1]


def test_a_timing_cache_from_another_machine_is_dropped_with_a_warning(standin, fp32_onnx, tiny_spec,
                                                                      tmp_path, caplog):
    cache = tmp_path / trt_build.timing_cache_name(standin.__version__, GPU)
    cache.write_bytes(b"cache:Other GPU/sm8.6/trt10.0.0")
    _build(fp32_onnx, tiny_spec, fp16=False, cache=cache)
    assert "does not fit this GPU/CUDA/TensorRT" in caplog.text and "starting with an empty cache" in caplog.text
    assert cache.read_bytes() == f"cache:{GPU_KEY}/trt{standin.__version__}".encode()
    caplog.clear()
    _build(fp32_onnx, tiny_spec, fp16=False, cache=cache)  # the cache it wrote fits: used silently
    assert caplog.text == "" and ("set_timing_cache", f"{GPU_KEY}/trt{standin.__version__}", False) in standin.calls


def test_timing_cache_file_is_keyed_by_gpu_cuda_and_tensorrt():
    name = trt_build.timing_cache_name("10.13.3.9", trt_build.GpuIdentity("NVIDIA H200 NVL", "9.0", "12.8"))
    assert name == "timing-NVIDIA-H200-NVL-sm9.0-cuda12.8-trt10.13.3.9.cache"
    assert name != trt_build.timing_cache_name("11.4.0.106", trt_build.GpuIdentity("NVIDIA H200 NVL", "9.0", "13.0"))


def test_parser_errors_name_the_node(standin, fp32_onnx, tiny_spec, tmp_path):
    proto = onnx.load(str(fp32_onnx))
    cast = next(n for n in proto.graph.node if "images" in n.input)
    cast.input[0] = "nchw"
    proto.graph.node.insert(0, onnx.helper.make_node("Transpose", ["images"], ["nchw"], name="early",
                                                     perm=[0, 3, 1, 2]))
    onnx.save(proto, str(tmp_path / "uint8_transpose.onnx"))
    with pytest.raises(ArtifactError, match=r"node 0 'early' \(Transpose\): UINT8 is only supported"):
        trt_build.network_from_onnx(tmp_path / "uint8_transpose.onnx", tiny_spec)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="cannot parse .*broken.onnx.*Failed to parse"):
        trt_build.network_from_onnx(tmp_path / "broken.onnx", tiny_spec)
    with pytest.raises(ArtifactError, match=r"has inputs \['images'\], expected \['pixels'\]"):
        trt_build.network_from_onnx(fp32_onnx, tiny_spec.replace(input_name="pixels"))


def test_a_failed_build_quotes_tensorrts_error(standin, fp32_onnx, tiny_spec, monkeypatch):
    monkeypatch.setattr(standin.IBuilderConfig, "add_optimization_profile", lambda self, profile: 0)
    with pytest.raises(ArtifactError, match="failed to build an engine .*no optimization profile"):
        _build(fp32_onnx, tiny_spec, fp16=False)
    monkeypatch.setattr(standin.IBuilderConfig, "add_optimization_profile", lambda self, profile: -1)
    with pytest.raises(ArtifactError, match="rejected the batch profile 1/8/64"):
        _build(fp32_onnx, tiny_spec, fp16=False)


def test_an_empty_tensorrt_namespace_package_is_not_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs leaves
    with pytest.raises(BackendUnavailableError, match=r"has no 'Builder'.*jlml-engine\[trt\]"):
        trt_build.load_tensorrt()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_names_the_extra():
    with pytest.raises(BackendUnavailableError, match=r"jlml-engine\[trt\]"):
        trt_build.load_tensorrt()


def test_the_gpu_is_named_or_the_build_fails(monkeypatch):
    cuda = make_pycuda("NVIDIA H200", (9, 0), 13000)
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=cuda))
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    assert trt_build.gpu_identity() == trt_build.GpuIdentity("NVIDIA H200", "9.0", "13.0")
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailableError, match=r"naming the GPU .*jlml-engine\[trt\]"):
        trt_build.gpu_identity()


def test_the_timing_cache_key_has_one_source_of_the_cuda_version(monkeypatch):
    """pycuda's driver version only: CUDA torch's runtime version (another spelling of "CUDA") would give
    one machine two cache names, so without pycuda the GPU is not named at all (no plan is built)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    with pytest.raises(BackendUnavailableError, match="pycuda"):
        trt_build.gpu_identity()
    cuda = make_pycuda("NVIDIA H200", (9, 0), 12080)  # driver 12.8, whatever torch was built with
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    assert trt_build.gpu_identity().cuda == "12.8"


def test_sidecar_records_what_the_engine_checks(tiny_spec, tmp_path):
    spec = tiny_spec.replace(onnx_sha256="ab" * 32)
    sidecar = trt_build.plan_sidecar("10.13.3", spec, fp16=True, gpu=GPU)
    sidecar.save(tmp_path / "model.plan.json")
    loaded = PlanSidecar.load(tmp_path / "model.plan.json")
    assert loaded == sidecar
    assert (loaded.onnx_sha256, loaded.precision, loaded.gpu_name, loaded.compute_capability) == (
        spec.onnx_sha256, "fp16", "Fake GPU", "9.0")
    assert (loaded.min_batch, loaded.opt_batch, loaded.max_batch) == (1, 8, 64)
    loaded.check(spec, tensorrt_version="10.13.3", gpu_name=loaded.gpu_name,
                 compute_capability=loaded.compute_capability, precision="fp16")


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("graph", ["fp32_onnx", "fp16_onnx"])
def test_plan_builds_and_reuses_its_timing_cache(request, graph, tiny_spec, tmp_path):
    onnx_path = request.getfixturevalue(graph)
    cache = tmp_path / "timing.cache"
    for _ in range(2):  # the second build loads the cache the first one saved
        parsed = trt_build.network_from_onnx(onnx_path, tiny_spec)
        plan = trt_build.serialize_engine(parsed, tiny_spec, workspace_mib=256, fp16=graph == "fp16_onnx",
                                          timing_cache=cache)
        assert len(plan) > 1000 and cache.stat().st_size > 0


@pytest.mark.trt
@needs_trt
def test_real_parser_errors_name_the_file(tiny_spec, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="cannot parse"):
        trt_build.network_from_onnx(broken, tiny_spec)


def test_trt_extras_bounds_are_true():
    """TensorRT 11 wheels are CUDA 13 only; pycuda builds against CUDA 13 only from 2025.1.2."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("trt", "trt-cu12"):
        reqs = {r.name: r.specifier for r in map(Requirement, extras[extra])}
        trt_name = next(n for n in reqs if n.startswith("tensorrt"))
        assert not reqs[trt_name].contains("12.0") and reqs[trt_name].contains("10.13.3.9")
        if reqs[trt_name].contains("11.4.0.106"):  # may resolve to a CUDA 13 TensorRT
            assert not reqs["pycuda"].contains("2025.1.1") and reqs["pycuda"].contains("2025.1.2")
            assert trt_name == "tensorrt"
        else:
            assert trt_name == "tensorrt-cu12"
    assert Version("2025.1.2") in reqs["pycuda"]

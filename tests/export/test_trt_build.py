"""TensorRT builder: real builds are marked ``trt`` and skip with the reason where TensorRT is missing."""
from __future__ import annotations

import importlib.util

import pytest

from engine.backends.plan_sidecar import PlanSidecar
from engine.errors import BackendUnavailableError
from export import trt_build

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not importable (pip install 'jlml-engine[trt]' on a CUDA machine)")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_names_the_extra():
    with pytest.raises(BackendUnavailableError, match=r"jlml-engine\[trt\]"):
        trt_build.load_tensorrt()


def test_sidecar_records_what_the_engine_checks(tiny_spec, tmp_path):
    spec = tiny_spec.replace(onnx_sha256="ab" * 32)
    sidecar = trt_build.plan_sidecar("10.13.3", spec, fp16=True)
    sidecar.save(tmp_path / "model.plan.json")
    loaded = PlanSidecar.load(tmp_path / "model.plan.json")
    assert loaded == sidecar
    assert (loaded.onnx_sha256, loaded.precision) == (spec.onnx_sha256, "fp16")
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
def test_parser_errors_name_the_file(tiny_spec, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(Exception, match="cannot parse"):
        trt_build.network_from_onnx(broken, tiny_spec)

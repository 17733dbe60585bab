"""The TensorRT backend's own logic (sidecar first, name-based I/O, buffers, padding to the profile's
minimum batch) run against stand-ins for tensorrt and pycuda that compute with ONNX Runtime.

The stand-ins copy bytes through fake device allocations exactly where the real copies go, so a wrong
offset, size or binding gives wrong embeddings here. Real TensorRT runs in the conformance test.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from engine.backends.ort import OrtBackend
from engine.backends.plan_sidecar import PlanSidecar
from engine.backends.trt import TrtBackend
from engine.embedder import Embedder
from engine.errors import SpecMismatchError
from engine.spec import PLAN_FILE, PLAN_SIDECAR_FILE

pytest.importorskip("onnxruntime")
GPU, CAPABILITY, VERSION = "Fake GPU", (9, 0), "10.13.3.9"


def _fake_cuda() -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")
    memory: dict[int, bytearray] = {}

    class Allocation:
        def __init__(self, nbytes: int) -> None:
            self.buf = memory.setdefault(id(self), bytearray(nbytes))

        def __int__(self) -> int:
            return id(self)

        def free(self) -> None:
            memory.pop(id(self))

    def htod(dst, src, stream):
        dst.buf[:src.nbytes] = src.tobytes()

    def dtoh(dst, src, stream):
        dst[...] = np.frombuffer(bytes(src.buf[:dst.nbytes]), dst.dtype).reshape(dst.shape)

    context = types.SimpleNamespace(push=lambda: None, pop=lambda: None, detach=lambda: None)
    device = types.SimpleNamespace(name=lambda: GPU, compute_capability=lambda: CAPABILITY,
                                   retain_primary_context=lambda: context)
    cuda.__dict__.update(
        init=lambda: None, Device=lambda index: device, Error=RuntimeError, memory=memory,
        pagelocked_empty=np.empty, mem_alloc=Allocation, memcpy_htod_async=htod, memcpy_dtoh_async=dtoh,
        Stream=lambda: types.SimpleNamespace(handle=1, synchronize=lambda: None),
    )
    return cuda


def _fake_trt(cuda, ort_backend: OrtBackend, min_batch: int) -> types.SimpleNamespace:
    spec = ort_backend.spec
    io_mode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    dtypes = types.SimpleNamespace(UINT8="u8", FLOAT="f32")

    class Context:
        def set_input_shape(self, name, shape):
            self.shape = shape
            return name == spec.input_name and min_batch <= shape[0] <= spec.max_batch

        def set_tensor_address(self, name, address):
            setattr(self, name, cuda.memory[address])
            return True

        def execute_async_v3(self, stream_handle):
            count = int(np.prod(self.shape))
            pixels = np.frombuffer(bytes(getattr(self, spec.input_name)[:count]), np.uint8)
            out = ort_backend._run(pixels.reshape(self.shape)).tobytes()
            getattr(self, spec.output_name)[:len(out)] = out
            return True

    engine = types.SimpleNamespace(
        num_io_tensors=2, get_tensor_name=[spec.input_name, spec.output_name].__getitem__,
        get_tensor_mode=lambda n: io_mode.INPUT if n == spec.input_name else io_mode.OUTPUT,
        get_tensor_dtype=lambda n: dtypes.UINT8 if n == spec.input_name else dtypes.FLOAT,
        get_tensor_profile_shape=lambda name, profile: [(b, *spec.image_shape)
                                                        for b in (min_batch, 16, spec.max_batch)],
        get_tensor_shape=lambda n: (-1, spec.embedding_dim), create_execution_context=Context,
    )
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda plan: engine)
    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    return types.SimpleNamespace(__version__=VERSION, Logger=Logger, Runtime=lambda logger: runtime,
                                 TensorIOMode=io_mode, DataType=dtypes)


@pytest.fixture
def fake_plan_folder(artifact_dir, tmp_path, monkeypatch):
    """``make(min_batch)`` -> an artefact folder with a sidecar for the fake GPU, fakes installed."""
    def make(min_batch: int = 1):
        folder = tmp_path / f"plan{min_batch}"
        folder.mkdir()
        for f in artifact_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / PLAN_FILE).write_bytes(b"plan")
        ort_backend = OrtBackend(folder, device="cpu")
        cuda = _fake_cuda()
        PlanSidecar(VERSION, GPU, CAPABILITY, ort_backend.spec.onnx_sha256, min_batch, 16,
                    ort_backend.spec.max_batch, "fp32").save(folder / PLAN_SIDECAR_FILE)
        monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=cuda))
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(cuda, ort_backend, min_batch))
        return folder
    return make


@pytest.mark.parametrize("min_batch", [1, 4])
def test_trt_path_gives_the_reference_answers(fake_plan_folder, make_images, reference, min_batch):
    images = make_images(150, seed=11)  # 64 + 64 + 22; with min_batch 4 a lone image is padded
    with Embedder(fake_plan_folder(min_batch), backend="trt") as emb:
        assert emb.backend_name == "trt" and emb.batch_size == 64
        np.testing.assert_allclose(emb(images), reference(images), atol=1e-5)
        np.testing.assert_allclose(emb(images[:1]), reference(images[:1]), atol=1e-5)


def test_trt_refuses_a_plan_for_another_precision(fake_plan_folder):
    with pytest.raises(SpecMismatchError, match="precision: plan has 'fp32', here 'fp16'"):
        TrtBackend(fake_plan_folder(), precision="fp16")

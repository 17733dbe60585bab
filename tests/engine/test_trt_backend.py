"""The TensorRT backend's own logic (sidecar first, name-based I/O, double-buffered pipeline, padding
to the profile's minimum batch) run against stand-ins for tensorrt and pycuda that compute with ONNX
Runtime.

The stand-ins are asynchronous the way CUDA is: copies and executions wait in the stream's queue and
run only when the host synchronises an event recorded after them (or the stream). So a result read
before its event was waited on is stale, a wrong offset, size or binding gives wrong embeddings, and
a pinned input overwritten before its queued copy ran is caught. The stream logs the enqueue order.
Real TensorRT runs in the conformance test.
"""
from __future__ import annotations

import gc
import sys
import threading
import types
import weakref
from itertools import count

import numpy as np
import pytest

from engine.backends.ort import OrtBackend
from engine.backends.plan_sidecar import PlanSidecar
from engine.backends.trt import TrtBackend, available
from engine.embedder import Embedder
from engine.errors import ArtifactError, InputError, SpecMismatchError
from engine.spec import PLAN_FILE, PLAN_SIDECAR_FILE, SPEC_FILE, ModelSpec, file_sha256

GPU, CAPABILITY, VERSION = "Fake GPU", (9, 0), "10.13.3.9"


class _Stream:
    """A CUDA stream: work is queued in order and runs only when the host waits for it."""

    def __init__(self, cuda: types.ModuleType) -> None:
        cuda.require_context("Stream()")
        self.queue: list = []
        self.log = cuda.log
        self.handle = id(self)
        self.released = cuda.released
        cuda.streams[self.handle] = self

    def __del__(self) -> None:
        self.released("Stream")

    def enqueue(self, entry: tuple, op) -> None:
        self.log.append(entry)
        self.queue.append(op)

    def run_until(self, op) -> None:
        while op in self.queue:
            self.queue.pop(0)()

    def synchronize(self) -> None:
        while self.queue:
            self.queue.pop(0)()


def _fake_cuda() -> types.ModuleType:
    """pycuda.driver as the backend uses it. Like the real one, it refuses to create streams, events and
    buffers with no current context, and it records every one released (freed or garbage-collected)
    while no context is current: pycuda warns "cannot activate out-of-thread context" and leaks it."""
    cuda = types.ModuleType("pycuda.driver")
    memory: dict[int, bytearray] = {}
    copies_in, copies_out, records = count(), count(), count()

    def require_context(what: str) -> None:
        if not getattr(cuda.current, "stack", []):
            raise RuntimeError(f"{what} failed: no CUDA context is current on this thread")

    def released(what: str) -> None:
        if not getattr(cuda.current, "stack", []):
            cuda.out_of_context.append(what)

    def pagelocked_empty(shape, dtype):
        require_context("pagelocked_empty")
        return np.empty(shape, dtype)

    class Allocation:
        def __init__(self, nbytes: int) -> None:
            require_context("mem_alloc")
            self.buf = memory.setdefault(id(self), bytearray(nbytes))

        def __int__(self) -> int:
            return id(self)

        def free(self) -> None:
            if memory.pop(id(self), None) is not None:
                released("mem_alloc")

        def __del__(self) -> None:
            self.free()

    def htod(dst, src, stream):
        queued = src.tobytes()

        def run():
            if src.tobytes() != queued:
                raise AssertionError("a pinned input was overwritten before its queued copy ran")
            dst.buf[:len(queued)] = queued
        stream.enqueue(("htod", next(copies_in)), run)

    def dtoh(dst, src, stream):
        def run():
            dst[...] = np.frombuffer(bytes(src.buf[:dst.nbytes]), dst.dtype).reshape(dst.shape)
        stream.enqueue(("dtoh", next(copies_out)), run)

    class Event:
        stream = marker = tag = None

        def __init__(self) -> None:
            require_context("Event()")

        def __del__(self) -> None:
            released("Event")

        def record(self, stream):
            self.stream, self.marker, self.tag = stream, lambda: None, next(records)
            stream.enqueue(("record", self.tag), self.marker)

        def synchronize(self):
            cuda.log.append(("wait", self.tag))
            if self.stream is not None:
                self.stream.run_until(self.marker)

    class Context:
        """pycuda's Context: a per-thread stack of current contexts; detach() pushes nothing back here
        but is recorded, since the backend must never detach the shared primary context."""

        def push(self):
            cuda.current.stack = [*getattr(cuda.current, "stack", []), self]

        def pop(self):
            stack = getattr(cuda.current, "stack", [])
            if not stack or stack[-1] is not self:
                raise RuntimeError("cuCtxPopCurrent failed: this context is not current on this thread")
            cuda.current.stack = stack[:-1]

        def detach(self):
            cuda.detached.append(self)

    class Device:
        visible = 1

        def __init__(self, index: int) -> None:
            if not 0 <= index < Device.visible:
                raise RuntimeError(f"cuDeviceGet failed: invalid device ordinal {index}")
            self.index = index

        @staticmethod
        def count() -> int:
            return Device.visible

        def name(self) -> str:
            return GPU

        def compute_capability(self) -> tuple[int, int]:
            return CAPABILITY

        def retain_primary_context(self) -> Context:
            cuda.retained.append(self.index)
            return Context()

    cuda.__dict__.update(
        current=threading.local(), retained=[], detached=[], out_of_context=[], require_context=require_context,
        released=released, init=lambda: None, Device=Device, Error=RuntimeError, memory=memory, log=[],
        streams=weakref.WeakValueDictionary(), pagelocked_empty=pagelocked_empty, mem_alloc=Allocation,
        memcpy_htod_async=htod,
        memcpy_dtoh_async=dtoh, Event=Event, Stream=lambda: _Stream(cuda),
    )
    return cuda


def _fake_trt(cuda, ort_backend: OrtBackend, min_batch: int) -> types.SimpleNamespace:
    spec = ort_backend.spec
    io_mode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    dtypes = types.SimpleNamespace(UINT8="u8", FLOAT="f32")

    faults: dict[str, int] = {}  # method -> successful calls left before it fails once

    def fails(method: str) -> bool:
        left = faults.get(method)
        if left is not None:
            faults[method] = left - 1
            if left == 0:
                del faults[method]
        return left == 0

    class Context:
        def set_input_shape(self, name, shape):
            self.shape = shape
            ok = name == spec.input_name and min_batch <= shape[0] <= spec.max_batch
            return ok and not fails("set_input_shape")

        def set_tensor_address(self, name, address):
            setattr(self, name, cuda.memory[address])
            return not fails("set_tensor_address")

        def execute_async_v3(self, stream_handle):
            if fails("execute_async_v3"):
                return False
            shape, source, target = self.shape, getattr(self, spec.input_name), getattr(self, spec.output_name)

            def run():  # with the shape and addresses bound at enqueue time, as TensorRT does
                pixels = np.frombuffer(bytes(source[:int(np.prod(shape))]), np.uint8)
                out = ort_backend._run(pixels.reshape(shape)).tobytes()
                target[:len(out)] = out
            cuda.streams[stream_handle].enqueue(("execute", shape[0]), run)
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

    return types.SimpleNamespace(__version__=VERSION, Builder=object, Logger=Logger, Runtime=lambda logger: runtime,
                                 TensorIOMode=io_mode, DataType=dtypes, faults=faults)


@pytest.fixture
def fake_plan_folder(artifact_dir, tmp_path, monkeypatch):
    """``make(min_batch)`` -> an artefact folder with a sidecar for the fake GPU, fakes installed."""
    pytest.importorskip("onnxruntime")  # the stand-ins compute with it; the real-GPU test does not

    def make(min_batch: int = 1, precision: str = "fp32"):
        folder = tmp_path / f"plan{min_batch}{precision}"
        folder.mkdir()
        for f in artifact_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / PLAN_FILE).write_bytes(b"plan")
        ort_backend = OrtBackend(folder, device="cpu")
        cuda = _fake_cuda()
        PlanSidecar(VERSION, GPU, CAPABILITY, ort_backend.spec.onnx_sha256, min_batch, 16,
                    ort_backend.spec.max_batch, precision).save(folder / PLAN_SIDECAR_FILE)
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


def test_trt_refuses_a_plan_the_spec_does_not_fingerprint(fake_plan_folder):
    folder = fake_plan_folder()
    spec = ModelSpec.load(folder)
    spec.replace(plan_sha256=file_sha256(folder / PLAN_FILE)).save(folder / SPEC_FILE)
    TrtBackend(folder).close()
    (folder / PLAN_FILE).write_bytes(b"a plan of another export")
    with pytest.raises(SpecMismatchError, match=r"model.plan has sha256 .* \(plan_sha256\)"):
        TrtBackend(folder)


def _fakes() -> tuple[types.ModuleType, types.SimpleNamespace]:
    """The stand-in pycuda.driver and tensorrt that ``fake_plan_folder`` installed."""
    return sys.modules["pycuda.driver"], sys.modules["tensorrt"]


def _uneven_batches(images: np.ndarray) -> list[np.ndarray]:
    """Full, small, full, single: with a profile minimum of 4 the small and single ones are padded."""
    return [images[:64], images[64:67], images[67:131], images[131:]]


@pytest.mark.parametrize("min_batch", [1, 4])
def test_pipeline_matches_one_batch_at_a_time(fake_plan_folder, make_images, reference, min_batch):
    batches = _uneven_batches(make_images(132, seed=5))
    with TrtBackend(fake_plan_folder(min_batch)) as backend:
        piped = list(backend.run_batches(batches))
        single = [backend(batch) for batch in batches]
    for got, alone, batch in zip(piped, single, batches, strict=True):
        np.testing.assert_array_equal(got, alone)
        np.testing.assert_allclose(got, reference(batch), atol=1e-5)
    assert [shape for kind, shape in _fakes()[0].log if kind == "execute"][:4] == [64, max(3, min_batch),
                                                                                  64, max(1, min_batch)]


def test_next_batch_is_enqueued_before_the_last_result_is_read(fake_plan_folder, make_images):
    with TrtBackend(fake_plan_folder()) as backend:
        outputs = backend.run_batches(make_images(10, seed=1)[i:i + 2] for i in range(0, 10, 2))
        log = _fakes()[0].log
        assert next(outputs).shape == (2, backend.spec.embedding_dim)
        assert ("htod", 1) in log and ("htod", 2) not in log  # lazy: one batch ahead, no more
        list(outputs)
    for i in range(4):  # batch i+1 is queued before the host first waits for batch i's event
        assert log.index(("htod", i + 1)) < log.index(("wait", i))
    assert log.index(("wait", 4)) > log.index(("record", 4))


@pytest.mark.parametrize(("method", "error", "message"), [
    ("set_input_shape", InputError, "rejected batch 64"),
    ("set_tensor_address", ArtifactError, "refused the device address"),
    ("execute_async_v3", ArtifactError, "execute_async_v3 failed"),
])
def test_a_failed_call_leaves_the_backend_usable(fake_plan_folder, make_images, reference, method,
                                                 error, message):
    images = make_images(150, seed=2)
    folder = fake_plan_folder()
    cuda, trt = _fakes()
    with Embedder(folder, backend="trt") as emb:
        trt.faults[method] = 2 if method == "set_tensor_address" else 1  # fails on the second batch
        with pytest.raises(error, match=message):
            emb(images)
        others = make_images(150, seed=3)  # other pixels, so a slot reused too early is caught
        np.testing.assert_allclose(emb(others), reference(others), atol=1e-5)
    assert cuda.memory == {}  # every device buffer freed by close()


def test_a_closed_backend_stops_the_pipeline(fake_plan_folder, make_images):
    backend = TrtBackend(fake_plan_folder())
    images = make_images(4, seed=3)
    outputs = backend.run_batches([images[:2], images[2:]])
    next(outputs)
    backend.close()
    assert _fakes()[0].memory == {}
    with pytest.raises(InputError, match="closed"):
        next(outputs)
    with pytest.raises(InputError, match="closed"):
        list(backend.run_batches([images]))


def test_an_abandoned_pipeline_does_not_corrupt_the_next(fake_plan_folder, make_images, reference):
    first, second = make_images(6, seed=4), make_images(6, seed=6)
    with TrtBackend(fake_plan_folder()) as backend:
        abandoned = backend.run_batches([first[:3], first[3:]])
        next(abandoned)  # the second batch stays queued in its slot
        del abandoned
        outputs = list(backend.run_batches([second[:3], second[3:]]))
    np.testing.assert_allclose(np.concatenate(outputs), reference(second), atol=1e-5)


# ---- backend "auto": the plan only where it fits (issue 10 #1) ----------------------------------------

def test_available_counts_the_visible_gpus(fake_plan_folder):
    fake_plan_folder()
    assert available() == (True, f"TensorRT {VERSION} on {GPU}")
    assert not available("cuda:1")[0] and "CUDA sees 1 GPU" in available("cuda:1")[1]
    _fakes()[0].Device.visible = 0
    assert available() == (False, available()[1]) and "CUDA sees 0 GPU" in available()[1]


def test_auto_serves_a_fitting_plan_with_tensorrt(fake_plan_folder, make_images, reference):
    images = make_images(5)
    with Embedder(fake_plan_folder()) as emb:  # fp32 plan: served in its own precision
        assert (emb.backend_name, emb.precision, emb.device) == ("trt", "fp32", "cuda:0")
        np.testing.assert_allclose(emb(images), reference(images), atol=1e-5)


def test_by_default_the_fp16_plan_export_builds_is_what_serves(fake_plan_folder, make_images, reference,
                                                                caplog):
    """No backend, device or precision given: the artefact's FP16 plan on CUDA, one line saying why."""
    caplog.set_level("INFO", logger="engine.embedder")
    folder = fake_plan_folder(precision="fp16")  # what export builds by default
    with Embedder(folder) as emb:
        assert (emb.backend_name, emb.precision, emb.device) == ("trt", "fp16", "cuda:0")
        np.testing.assert_allclose(emb(make_images(3)), reference(make_images(3)), atol=1e-5)
    [line] = [r.getMessage() for r in caplog.records if r.name == "engine.embedder"]
    assert "with trt fp16 on cuda:0: model.plan fits" in line
    with Embedder(folder, backend="trt") as emb:  # --backend trt on a default artefact serves too
        assert emb.precision == "fp16"
    caplog.clear()
    with Embedder(folder, device="cpu") as emb:  # on the CPU: ONNX Runtime FP32
        assert (emb.backend_name, emb.precision, emb.device) == ("ort", "fp32", "cpu")
    assert "with ort fp32 on cpu: device 'cpu' asked for" in caplog.text


def test_python_m_serve_serves_the_plan_by_default(fake_plan_folder, monkeypatch, capsys):
    """`python -m serve ARTIFACT` with no other flag: the embed model's Embedder serves the FP16 plan.
    tritonserver is stood in: it records the environment serve hands it and "dies" at once; the embed
    model is then initialised as Triton's Python backend would, with that environment."""
    import json

    import serve.__main__
    import serve.server
    from serve.triton_models import EmbedModel

    folder = fake_plan_folder(precision="fp16")
    handed: dict = {}

    class Died:  # the tritonserver process serve() starts
        def __init__(self, cmd, env, cwd):
            handed.update(env)

        def poll(self, timeout=None):
            return 1

        wait = poll

    monkeypatch.setattr(serve.server, "repository", lambda artifact: folder / "triton")
    monkeypatch.setattr(serve.server.subprocess, "Popen", Died)
    assert serve.__main__.main([str(folder)]) == 1  # 1: tritonserver "died"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace())
    for name, value in handed.items():
        if name.startswith("JLML_"):
            monkeypatch.setenv(name, value)
    model = EmbedModel()
    model.initialize({"model_repository": str(folder / "triton" / "embed"), "model_config": json.dumps({"name": "embed"})})
    model.finalize()
    assert "embed: <Embedder trt fp16 batch_size=64> (model.plan fits this GPU and TensorRT)" in capsys.readouterr().out


def test_auto_falls_back_to_ort_with_one_line_when_the_plan_does_not_fit(fake_plan_folder, caplog):
    folder = fake_plan_folder(precision="fp16")
    with Embedder(folder, precision="fp32") as emb:  # asked for fp32: the fp16 plan does not serve it
        assert (emb.backend_name, emb.precision) == ("ort", "fp32")
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "precision: plan has 'fp16', here 'fp32'" in lines[0]
    sys.modules["tensorrt"].__version__ = "11.4.0.106"  # another TensorRT: the plan cannot load
    caplog.clear()
    with Embedder(folder) as emb:
        assert (emb.backend_name, emb.precision) == ("ort", "fp32")
    assert "tensorrt_version: plan has '10.13.3.9', here '11.4.0.106'" in caplog.text


def test_an_explicit_precision_the_artefact_lacks_lists_what_it_has(fake_plan_folder):
    folder = fake_plan_folder(precision="fp16")
    with pytest.raises(ArtifactError, match=r"precision 'fp32' .* backend 'trt'.*has ort: fp32, fp16; trt: fp16"):
        Embedder(folder, backend="trt", precision="fp32")
    with pytest.raises(ArtifactError, match=r"precision 'int8' .* backend 'ort'.*has ort: fp32, fp16; trt: fp16"):
        Embedder(folder, precision="int8")


# ---- one retained primary context per device, only pushed and popped (issue 10 #8) -------------------

def test_backends_share_one_retained_primary_context_and_leave_none_current(fake_plan_folder, make_images):
    folder = fake_plan_folder()
    cuda = _fakes()[0]
    for _ in range(3):
        with TrtBackend(folder) as backend:
            backend(make_images(2))
        assert getattr(cuda.current, "stack", []) == []  # nothing left pushed on this thread
    assert cuda.retained == [0] and cuda.detached == []


# ---- threads (issue 10 #12) ------------------------------------------------------------------------

def _embed_in_threads(emb: Embedder, inputs: list[np.ndarray], repeats: int = 1) -> dict[int, np.ndarray]:
    """Each input embedded ``repeats`` times by its own thread, all started together on one Embedder."""
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(inputs))

    def work(t: int) -> None:
        barrier.wait()
        results[t] = np.concatenate([emb(inputs[t]) for _ in range(repeats)])
    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_close_releases_every_worker_in_the_context_and_ended_threads_give_theirs_back(fake_plan_folder,
                                                                                       make_images):
    """Workers of threads that ended are freed when the next one is made (a thread-pool server does not
    grow until close), and close() frees the last worker's stream, events and buffers while the context
    is still current, so nothing is left for pycuda to release outside it."""
    folder = fake_plan_folder()
    cuda = _fakes()[0]
    backend = TrtBackend(folder)  # the opening thread's worker: 2 slots x 2 device buffers
    per_worker = len(cuda.memory)
    for seed in range(3):  # three short-lived threads, one after the other
        thread = threading.Thread(target=backend, args=(make_images(3, seed=seed),))
        thread.start()
        thread.join()
    assert len(cuda.memory) == 2 * per_worker  # the opening thread's and the last thread's
    assert cuda.out_of_context == []
    backend.close()
    gc.collect()
    assert cuda.memory == {} and len(cuda.streams) == 0
    assert cuda.out_of_context == [], f"released with no current context: {cuda.out_of_context}"


def test_concurrent_threads_get_their_own_rows(fake_plan_folder, make_images, reference):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so interleaved calls really interleave
    try:
        inputs = [make_images(40, seed=100 + t) for t in range(6)]
        with Embedder(fake_plan_folder(), backend="trt", batch_size=8) as emb:
            results = _embed_in_threads(emb, inputs, repeats=3)
    finally:
        sys.setswitchinterval(interval)
    for t, images in enumerate(inputs):
        np.testing.assert_allclose(results[t], np.concatenate([reference(images)] * 3), atol=1e-5)


@pytest.fixture
def real_fp32_plan(plan_folder):
    """A real fp32 plan of the tiny model, where TensorRT and a GPU are (else skip with the reason)."""
    ok, why = available()
    if not ok:
        pytest.skip(why)
    return plan_folder("fp32")


@pytest.mark.gpu
@pytest.mark.trt
def test_real_tensorrt_pipeline_matches_one_batch_at_a_time(real_fp32_plan, make_images):
    """The same pipeline on real TensorRT and CUDA, after an abandoned run left work in a slot."""
    batches = _uneven_batches(make_images(132, seed=5))
    with TrtBackend(real_fp32_plan) as backend:
        abandoned = backend.run_batches(batches[::-1])
        next(abandoned)
        del abandoned
        piped = list(backend.run_batches(batches))
        single = [backend(batch) for batch in batches]
    for got, alone in zip(piped, single, strict=True):
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.trt
def test_real_tensorrt_threads_get_their_own_rows(real_fp32_plan, make_images):
    """Threads sharing one real TrtBackend (a worker each) give what one thread alone gives."""
    inputs = [make_images(70, seed=200 + t) for t in range(4)]
    with Embedder(real_fp32_plan, backend="trt") as emb:
        alone = [emb(images) for images in inputs]
        results = _embed_in_threads(emb, inputs)
    for t, expected in enumerate(alone):
        np.testing.assert_allclose(results[t], expected, rtol=0, atol=1e-6)

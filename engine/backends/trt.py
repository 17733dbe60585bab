"""TensorRT backend (TensorRT 10 and 11): a prebuilt ``model.plan`` served with name-based I/O.

The plan is deserialised only after its sidecar matched the spec, the installed TensorRT, the GPU
and the ONNX fingerprint (``plan_sidecar``); ``unfit_reason`` asks the same question without opening
anything, so ``Embedder(backend="auto")`` uses a plan only where it fits.

CUDA context: TensorRT runs in the device's primary context (the one the CUDA runtime uses). It is
retained once per device for the process (``_primary_context``) and only pushed and popped around
CUDA work, so opening and closing backends never leaves a context current or released under another.

Threads: the engine is shared; each thread that embeds gets its own worker (execution context, stream
and double buffer), since one execution context must never run two batches at once and two threads
would otherwise interleave rows in the same pinned buffers.

Batches run through a double buffer: two slots, each with pinned host and device buffers sized once
for the profile's largest batch and a CUDA event. Batch i+1 is staged and enqueued before the host
waits for batch i, so host staging and copy-out overlap device work and the device queue never drains
between batches. A slot is reused only after its event says the GPU is done with it.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import parse_device
from ..errors import ArtifactError, BackendUnavailableError, InputError, SpecMismatchError
from ..spec import PLAN_FILE, PLAN_SIDECAR_FILE, ModelSpec
from .base import BaseBackend
from .optional import optional_import
from .plan_sidecar import PlanSidecar, format_capability

if TYPE_CHECKING:
    import tensorrt as trt

_PRIMARY: dict[tuple[int, int], Any] = {}  # (id of the pycuda.driver module, device) -> retained context
_PRIMARY_LOCK = threading.Lock()


def import_runtime(needed_for: str = "the 'trt' backend") -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver), both or BackendUnavailableError: a TensorRT container without pycuda
    can build a plan but never run it, so whatever needs the plan to run (this backend, export's parity
    gate) probes both here. tensorrt must be a real one (it has ``Builder``); pycuda is not initialised."""
    trt = optional_import("tensorrt", needed_for=needed_for, attribute="Builder")
    return trt, optional_import("pycuda.driver", needed_for=needed_for)


def _import_trt() -> Any:
    """pycuda.driver, once tensorrt and pycuda both import (``import_runtime``)."""
    return import_runtime()[1]


def _device_index(device: str) -> int:
    kind, index = parse_device(device)
    if kind == "cpu":
        raise InputError("the 'trt' backend runs on a GPU: pass device='auto', 'cuda' or 'cuda:N'")
    return index


def machine(device: str = "auto") -> tuple[str, str, str]:
    """(TensorRT version, GPU name, compute capability "M.m") of ``device``; BackendUnavailableError."""
    cuda, index = _import_trt(), _device_index(device)
    import tensorrt as trt  # checked by _import_trt: a real TensorRT, so this names its version
    try:
        cuda.init()
        if not 0 <= index < cuda.Device.count():
            raise BackendUnavailableError(
                f"device {device!r}: TensorRT is installed but CUDA sees {cuda.Device.count()} GPU(s); "
                "pass an index below that"
            )
        gpu = cuda.Device(index)
        return trt.__version__, str(gpu.name()), format_capability(gpu.compute_capability())
    except cuda.Error as exc:
        raise BackendUnavailableError(f"TensorRT is installed but the CUDA driver failed: {exc}") from exc


def available(device: str = "auto") -> tuple[bool, str]:
    """Whether this machine can run the TensorRT backend on ``device``, and why (not); never raises."""
    try:
        version, gpu_name, _ = machine(device)
    except (BackendUnavailableError, InputError) as exc:
        return False, str(exc)
    return True, f"TensorRT {version} on {gpu_name}"


def unfit_reason(folder: str | os.PathLike[str], spec: ModelSpec, *, device: str = "auto",
                 precision: str | None = None) -> str | None:
    """Why the folder's plan cannot serve ``spec`` here (None when it can), without opening it."""
    folder = Path(folder)
    if not (folder / PLAN_FILE).is_file():
        return f"no {PLAN_FILE} in {folder}"
    try:
        version, gpu_name, capability = machine(device)
        sidecar = PlanSidecar.load(folder / PLAN_SIDECAR_FILE)
    except (BackendUnavailableError, InputError, ArtifactError) as exc:
        return str(exc)
    diffs = sidecar.mismatches(spec, tensorrt_version=version, gpu_name=gpu_name,
                               compute_capability=capability, precision=precision)
    return "; ".join(diffs) or None


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT shape as a tuple of ints (Dims is a sequence by ``len`` and indexing)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _primary_context(cuda: Any, index: int) -> Any:
    """The device's primary context, retained once per process and never detached (see module doc)."""
    with _PRIMARY_LOCK:
        key = (id(cuda), index)
        if key not in _PRIMARY:
            _PRIMARY[key] = cuda.Device(index).retain_primary_context()
        return _PRIMARY[key]


@dataclass(frozen=True)
class _Slot:
    """One half of the double buffer: where one batch lives from staging until its result is read."""

    host_in: np.ndarray  # pinned, so the copy in is truly asynchronous
    host_out: np.ndarray  # pinned, so the copy out is truly asynchronous
    dev_in: Any
    dev_out: Any
    done: Any  # CUDA event recorded after the slot's copy out: the buffers are free again


@dataclass(frozen=True)
class _Worker:
    """What one thread needs to run batches: its own execution context, stream and double buffer."""

    context: trt.IExecutionContext
    stream: Any
    slots: tuple[_Slot, _Slot]
    thread: threading.Thread  # its owner: once that thread has ended, the worker is freed


class TrtBackend(BaseBackend):
    """Serves ``model.plan`` from an artefact folder on one GPU; safe to call from several threads."""

    name = "trt"

    def __init__(self, artifact_dir: str | os.PathLike[str], spec: ModelSpec | None = None, *,
                 device: str = "auto", precision: str | None = None) -> None:
        self._cuda = _import_trt()
        folder = Path(artifact_dir)
        self.spec = spec if spec is not None else ModelSpec.load(folder)
        sidecar = PlanSidecar.load(folder / PLAN_SIDECAR_FILE)  # before any GPU or plan is touched
        version, gpu_name, capability = machine(device)
        sidecar.check(self.spec, tensorrt_version=version, gpu_name=gpu_name,
                      compute_capability=capability, precision=precision)
        self.precision = sidecar.precision
        index = _device_index(device)
        self.device = f"cuda:{index}"
        self._ctx = _primary_context(self._cuda, index)
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        with self._current():
            self._open(folder / PLAN_FILE)

    def _open(self, plan_path: Path) -> None:
        import tensorrt as trt  # machine() found a real TensorRT

        try:
            plan = plan_path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read TensorRT plan {plan_path}: {exc}; rebuild the engine") from exc
        self.spec.check_fingerprint(plan_path, "plan_sha256", plan)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {plan_path}; rebuild it on this machine")
        self._engine: trt.ICudaEngine = engine
        self._plan_path = plan_path
        self._check_io()
        self._check_shapes()
        self._worker()  # the opening thread's worker: a plan that cannot run fails here, not later

    def _check_io(self) -> None:
        """Raise SpecMismatchError unless the engine has the spec's uint8 input and float32 output."""
        import tensorrt as trt

        engine = self._engine
        got = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            got[tensor] = (engine.get_tensor_mode(tensor), engine.get_tensor_dtype(tensor))
        want = {self.spec.input_name: (trt.TensorIOMode.INPUT, trt.DataType.UINT8),
                self.spec.output_name: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT)}
        if got != want:
            raise SpecMismatchError(
                f"TensorRT engine has I/O {got}, the spec expects {want}; rebuild it from the "
                "artefact's ONNX with `python -m export.build_engine`"
            )

    def _check_shapes(self) -> None:
        """Read the batch range from profile 0; refuse pixel or embedding sizes the spec does not have.

        Buffers are sized from the spec, so a plan with larger tensors would overrun them.
        """
        engine, spec = self._engine, self.spec
        low, _, high = (_dims(s) for s in engine.get_tensor_profile_shape(spec.input_name, 0))
        width = _dims(engine.get_tensor_shape(spec.output_name))[-1]
        if low[1:] != spec.image_shape or high[1:] != spec.image_shape or width != spec.embedding_dim:
            raise SpecMismatchError(
                f"TensorRT engine takes {low}..{high} images and gives {width}-D embeddings, the spec "
                f"says (N, {spec.height}, {spec.width}, 3) -> {spec.embedding_dim}-D; rebuild the engine"
            )
        self.min_batch, self.max_batch = int(low[0]), int(high[0])

    def _worker(self) -> _Worker:
        """This thread's worker, created on its first batch (with this backend's context current); the
        workers of threads that have ended are freed then, so a thread pool's churn does not pile up."""
        thread, key = threading.current_thread(), threading.get_ident()
        with self._lock:
            worker = self._workers.get(key)
        if worker is None or worker.thread is not thread:  # none yet, or a dead thread's ident reused
            with self._current():
                with self._lock:
                    ended = [w for w in self._workers.values() if not w.thread.is_alive()]
                    self._workers = {k: w for k, w in self._workers.items() if w.thread.is_alive()}
                _free(ended)
                del ended  # the last references: released here, inside the context
                context = self._engine.create_execution_context()
                if context is None:
                    raise ArtifactError(f"TensorRT could not create an execution context for {self._plan_path}")
                worker = _Worker(context, self._cuda.Stream(), (self._new_slot(), self._new_slot()), thread)
            with self._lock:
                self._workers[key] = worker
        return worker

    def _new_slot(self) -> _Slot:
        cuda, spec = self._cuda, self.spec
        host_in = cuda.pagelocked_empty((self.max_batch, *spec.image_shape), np.uint8)
        host_out = cuda.pagelocked_empty((self.max_batch, spec.embedding_dim), np.float32)
        return _Slot(host_in, host_out, cuda.mem_alloc(host_in.nbytes), cuda.mem_alloc(host_out.nbytes),
                     cuda.Event())

    @contextmanager
    def _current(self) -> Iterator[None]:
        """Make the device's primary context current on this thread for the block, then pop it."""
        self._ctx.push()
        try:
            yield
        finally:
            self._ctx.pop()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        [out] = self._run_batches([batch])
        return out

    def _run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Enqueue batch i into slot i % 2, then read batch i-1's result while the GPU works on i."""
        pending: tuple[_Slot, int] | None = None
        worker: _Worker | None = None
        for i, batch in enumerate(batches):
            worker = worker or self._worker()
            slot = worker.slots[i % 2]
            self._enqueue(worker, slot, batch)
            if pending is not None:
                yield self._collect(*pending)
            pending = slot, len(batch)
        if pending is not None:
            yield self._collect(*pending)

    def _enqueue(self, worker: _Worker, slot: _Slot, batch: np.ndarray) -> None:
        """Stage ``batch`` in ``slot`` and enqueue copy in, execute and copy out; does not wait."""
        n = len(batch)
        rows = max(n, self.min_batch)  # a profile that starts above 1 gets padded batches
        cuda, stream = self._cuda, worker.stream
        with self._current():
            slot.done.synchronize()  # the slot's previous batch may still be reading or writing it
            slot.host_in[:n] = batch
            try:
                self._bind(worker.context, slot, rows)
                cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:rows], stream)
                if not worker.context.execute_async_v3(stream_handle=stream.handle):
                    raise ArtifactError("TensorRT execute_async_v3 failed; see the TensorRT log above")
                cuda.memcpy_dtoh_async(slot.host_out[:rows], slot.dev_out, stream)
            finally:  # also after an error, so the next use of the slot waits for what was enqueued
                slot.done.record(stream)

    def _bind(self, context: trt.IExecutionContext, slot: _Slot, rows: int) -> None:
        """Set the batch shape and point the context at ``slot``; it takes effect at the next enqueue."""
        spec = self.spec
        if not context.set_input_shape(spec.input_name, (rows, *spec.image_shape)):
            raise InputError(f"TensorRT rejected batch {rows} (profile {self.min_batch}..{self.max_batch})")
        for tensor, buffer in ((spec.input_name, slot.dev_in), (spec.output_name, slot.dev_out)):
            if not context.set_tensor_address(tensor, int(buffer)):
                raise ArtifactError(f"TensorRT refused the device address for tensor {tensor!r}")

    def _collect(self, slot: _Slot, n: int) -> np.ndarray:
        """Wait for ``slot``'s batch and copy its ``n`` embeddings out of the pinned buffer."""
        self._ensure_open()  # a generator may be resumed after close(), which freed the buffers
        with self._current():
            slot.done.synchronize()
        return slot.host_out[:n].copy()

    def _release(self) -> None:
        # TensorRT objects go before the engine and runtime they came from; the primary context stays
        # retained for the process (other backends on this device share it) and is only popped. Every
        # reference to a stream, event or buffer is dropped inside the block: released after the pop,
        # pycuda cannot activate the context ("out-of-thread context") and leaks them.
        with self._current():
            with self._lock:
                workers, self._workers = list(self._workers.values()), {}
            _free(workers)
            del workers
            del self._engine, self._runtime


def _free(workers: list[_Worker]) -> None:
    """Free the workers' device and pinned buffers (call with their context current; drop them after)."""
    for worker in workers:
        worker.stream.synchronize()  # nothing may still use the buffers freed below
        for slot in worker.slots:
            slot.dev_in.free()
            slot.dev_out.free()
            for host in (slot.host_in, slot.host_out):  # pycuda's pagelocked arrays: a HostAllocation base
                free = getattr(host.base, "free", None)
                if free is not None:
                    free()

"""TensorRT backend (TensorRT 10 and 11): a prebuilt ``model.plan`` served with name-based I/O.

The plan is deserialised only after its sidecar matched the spec, the installed TensorRT, the GPU
and the ONNX fingerprint (``plan_sidecar``).

Batches run through a double buffer: two slots, each with pinned host and device buffers sized once
for the profile's largest batch and a CUDA event. One stream and one execution context carry every
batch (a context must not run concurrently with itself), but batch i+1 is staged and enqueued before
the host waits for batch i, so host staging and copy-out overlap device work and the device queue
never drains between batches. A slot is reused only after its event says the GPU is done with it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, InputError, SpecMismatchError
from ..spec import PLAN_FILE, PLAN_SIDECAR_FILE, ModelSpec
from .base import BaseBackend, parse_device
from .plan_sidecar import PlanSidecar

_INSTALL = "install it with `pip install 'jlml-engine[trt]'` on a CUDA machine (NVIDIA's index)"


def _import_trt() -> tuple[Any, Any]:
    """Return (tensorrt, pycuda.driver), or raise BackendUnavailableError naming the extra."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there, NVIDIA's libraries are not
        raise BackendUnavailableError(
            f"the 'trt' backend needs tensorrt and pycuda ({exc}); {_INSTALL}"
        ) from exc
    return trt, cuda


def available() -> tuple[bool, str]:
    """Whether this machine can run the TensorRT backend, and why (not); never raises."""
    try:
        trt, cuda = _import_trt()
    except BackendUnavailableError as exc:
        return False, str(exc)
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return False, "TensorRT is installed but no CUDA device is visible"
        return True, f"TensorRT {trt.__version__} on {cuda.Device(0).name()}"
    except cuda.Error as exc:
        return False, f"TensorRT is installed but the CUDA driver failed: {exc}"


def _device_index(device: str) -> int:
    kind, index = parse_device(device)
    if kind == "cpu":
        raise InputError("the 'trt' backend runs on a GPU: pass device='auto', 'cuda' or 'cuda:N'")
    return index


@dataclass(frozen=True)
class _Slot:
    """One half of the double buffer: where one batch lives from staging until its result is read."""

    host_in: np.ndarray  # pinned, so the copy in is truly asynchronous
    host_out: np.ndarray  # pinned, so the copy out is truly asynchronous
    dev_in: Any
    dev_out: Any
    done: Any  # CUDA event recorded after the slot's copy out: the buffers are free again


class TrtBackend(BaseBackend):
    """Serves ``model.plan`` from an artefact folder on one GPU."""

    name = "trt"

    def __init__(self, artifact_dir: str | os.PathLike[str], spec: ModelSpec | None = None, *,
                 device: str = "auto", precision: str | None = None) -> None:
        trt, cuda = _import_trt()
        folder = Path(artifact_dir)
        self.spec = spec if spec is not None else ModelSpec.load(folder)
        sidecar = PlanSidecar.load(folder / PLAN_SIDECAR_FILE)
        cuda.init()
        gpu = cuda.Device(_device_index(device))
        sidecar.check(self.spec, tensorrt_version=trt.__version__, gpu_name=gpu.name(),
                      compute_capability=gpu.compute_capability(), precision=precision)
        self.precision = sidecar.precision
        self._cuda = cuda
        self._ctx = gpu.retain_primary_context()  # TensorRT's CUDA runtime uses the primary context
        try:
            with self._current():
                self._open(trt, folder / PLAN_FILE)
        except BaseException:
            self._ctx.detach()
            raise

    def _open(self, trt: Any, plan_path: Path) -> None:
        try:
            plan = plan_path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read TensorRT plan {plan_path}: {exc}; rebuild the engine") from exc
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {plan_path}; rebuild it on this machine")
        self._check_io(trt)
        self._check_shapes()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for {plan_path}")
        self._allocate()

    def _check_io(self, trt: Any) -> None:
        """Raise SpecMismatchError unless the engine has the spec's uint8 input and float32 output."""
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
        low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(spec.input_name, 0))
        width = tuple(engine.get_tensor_shape(spec.output_name))[-1]
        if low[1:] != spec.image_shape or high[1:] != spec.image_shape or width != spec.embedding_dim:
            raise SpecMismatchError(
                f"TensorRT engine takes {low}..{high} images and gives {width}-D embeddings, the spec "
                f"says (N, {spec.height}, {spec.width}, 3) -> {spec.embedding_dim}-D; rebuild the engine"
            )
        self.min_batch, self.max_batch = int(low[0]), int(high[0])

    def _allocate(self) -> None:
        """Two slots for the largest batch and the one stream every batch runs on."""
        self._stream = self._cuda.Stream()
        self._slots = (self._new_slot(), self._new_slot())

    def _new_slot(self) -> _Slot:
        cuda, spec = self._cuda, self.spec
        host_in = cuda.pagelocked_empty((self.max_batch, *spec.image_shape), np.uint8)
        host_out = cuda.pagelocked_empty((self.max_batch, spec.embedding_dim), np.float32)
        return _Slot(host_in, host_out, cuda.mem_alloc(host_in.nbytes), cuda.mem_alloc(host_out.nbytes),
                     cuda.Event())

    @contextmanager
    def _current(self) -> Iterator[None]:
        """Make this backend's CUDA context current on this thread for the block."""
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
        for i, batch in enumerate(batches):
            slot = self._slots[i % 2]
            self._enqueue(slot, batch)
            if pending is not None:
                yield self._collect(*pending)
            pending = slot, len(batch)
        if pending is not None:
            yield self._collect(*pending)

    def _enqueue(self, slot: _Slot, batch: np.ndarray) -> None:
        """Stage ``batch`` in ``slot`` and enqueue copy in, execute and copy out; does not wait."""
        n = len(batch)
        rows = max(n, self.min_batch)  # a profile that starts above 1 gets padded batches
        cuda, stream = self._cuda, self._stream
        with self._current():
            slot.done.synchronize()  # the slot's previous batch may still be reading or writing it
            slot.host_in[:n] = batch
            try:
                self._bind(slot, rows)
                cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:rows], stream)
                if not self._context.execute_async_v3(stream_handle=stream.handle):
                    raise ArtifactError("TensorRT execute_async_v3 failed; see the TensorRT log above")
                cuda.memcpy_dtoh_async(slot.host_out[:rows], slot.dev_out, stream)
            finally:  # also after an error, so the next use of the slot waits for what was enqueued
                slot.done.record(stream)

    def _bind(self, slot: _Slot, rows: int) -> None:
        """Set the batch shape and point the context at ``slot``; it takes effect at the next enqueue."""
        spec, context = self.spec, self._context
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
        # TensorRT objects must die before the context they live in is released.
        try:
            with self._current():
                self._stream.synchronize()  # nothing may still use the buffers freed below
                for slot in self._slots:
                    slot.dev_in.free()
                    slot.dev_out.free()
                del self._context, self._engine, self._runtime, self._stream, self._slots
        finally:
            self._ctx.detach()

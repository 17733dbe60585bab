"""The protocol every backend meets, and the shared checks that make backends interchangeable.

A backend serves one ``ModelSpec``: it takes uint8 NHWC pixels (preprocessing lives inside the model)
and returns unit-length float32 embeddings, for batches of 1 to ``max_batch`` images. Batching larger
inputs is the Embedder's job, so a backend can keep fixed-size device buffers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, SpecMismatchError
from ..spec import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")  # int8: ONNX Runtime only (model.int8.onnx)


@runtime_checkable
class Backend(Protocol):
    """What the Embedder needs from a backend (see module docstring)."""

    spec: ModelSpec
    name: str
    precision: str
    max_batch: int
    device: Any  # where it runs: "cpu"/"cuda:N" (torch: a torch.device that prints so)

    def __call__(self, images: np.ndarray) -> np.ndarray: ...
    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Backend: ...
    def __exit__(self, *exc: object) -> None: ...


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one every backend understands, else raise InputError."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {PRECISIONS}; pass 'fp32', 'fp16' or 'int8'")
    return precision


class BaseBackend(ABC):
    """Input validation, output checks and the context-manager plumbing shared by every backend.

    Subclasses set ``spec``, ``name``, ``precision`` and ``max_batch`` and implement ``_run`` (the
    validated batch in, raw (N, D) output out) and ``_release``; a backend that can pipeline batches
    also overrides ``_run_batches``.
    """

    spec: ModelSpec
    name: str
    precision: str
    max_batch: int
    device: Any
    _closed: bool = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = self._check_batch(images)
        return self._check_output(self._run(batch), len(batch))

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Embed each batch in order, yielding its (n, D) embeddings; same checks as ``__call__``.

        Lazy on purpose: a backend that can overlap transfers with compute (TensorRT) enqueues batch
        i+1 before it hands back batch i, so the device never waits for the host between batches.
        """
        sizes: deque[int] = deque()

        def checked() -> Iterator[np.ndarray]:
            for images in batches:
                batch = self._check_batch(images)
                sizes.append(len(batch))
                yield batch

        for out in self._run_batches(checked()):
            yield self._check_output(out, sizes.popleft())

    def _ensure_open(self) -> None:
        if self._closed:
            raise InputError(f"{self.name} backend is closed; open a new one to embed more images")

    def _check_batch(self, images: np.ndarray) -> np.ndarray:
        """The validated batch of 1..max_batch images, or InputError."""
        self._ensure_open()
        batch = self.spec.check_images(images)
        if not 1 <= len(batch) <= self.max_batch:
            raise InputError(
                f"{self.name} backend takes 1 to {self.max_batch} images per call, got {len(batch)}; "
                "use engine.embedder.Embedder, which splits any number of images into batches"
            )
        return batch

    def _check_output(self, raw: np.ndarray, rows: int) -> np.ndarray:
        """``raw`` as float32 (rows, D), or SpecMismatchError when the model broke its spec."""
        out = np.asarray(raw, dtype=np.float32)
        expected = (rows, self.spec.embedding_dim)
        if out.shape != expected:
            raise SpecMismatchError(
                f"{self.name} backend returned embeddings of shape {out.shape}, the spec promises "
                f"{expected}; the model does not match its spec.json, re-export the artefact"
            )
        return out

    def _run_batches(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Raw outputs for validated batches, in order: one ``_run`` each unless a backend pipelines."""
        return map(self._run, batches)

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Embed a validated batch of 1..max_batch images."""

    @abstractmethod
    def _release(self) -> None:
        """Free sessions, device buffers and streams; called once by ``close``."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> BaseBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self.name} backend {self.precision} max_batch={self.max_batch}>"

"""The Python-backend models of the artefact's Triton repository (its ``*/1/model.py`` import these).

Triton's Python backend runs each model in its own process (a stub) and calls ``initialize``,
``execute`` and ``finalize``; ``triton_python_backend_utils`` exists only there, so it is imported in
``initialize``. Settings come from the environment tritonserver hands its models (``python -m serve``
sets them from its flags; a container takes ``docker run -e``), see ``Settings``.

Errors: an engine error (JLMLError: what was sent is wrong) answers that request with the engine's
sentence and INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT); anything else is logged with its
traceback and answered with a fixed line and INTERNAL, so no traceback or path reaches a client.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import Embedder, InputError, JLMLError, ModelSpec
from engine.client import EMBED_MODEL, EMBEDDINGS, IMAGES, K

from .models import GalleryService, Request, Response

INTERNAL_LINE = "the server failed on this request; its log has the details"
ENV = {"backend": "JLML_BACKEND", "device": "JLML_DEVICE", "precision": "JLML_PRECISION",
       "gallery": "JLML_GALLERY", "gallery_device": "JLML_GALLERY_DEVICE",
       "allow_other_model": "JLML_ALLOW_OTHER_MODEL", "ray": "JLML_RAY", "spin_wait": "JLML_ORT_SPIN"}
SWITCHES = {"allow_other_model": "set it to 1 to serve a gallery embedded by another model",
            "spin_wait": "set it to 0 to let ONNX Runtime's threads sleep between batches"}
SWITCH = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}  # a bool's values


@dataclass(frozen=True)
class Settings:
    """How the models run: embed's engine backend, device and precision (None: the best the artefact
    has there), the gallery file behind search and gallery_add (None: an empty gallery, no adds),
    where it is searched, and whether a gallery embedded by another model than the artefact's is served
    (``JLML_ALLOW_OTHER_MODEL=1``). Environment names: ``ENV``."""

    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None
    gallery: str | None = None
    gallery_device: str = "cpu"
    allow_other_model: bool = False
    ray: str | None = None  # the Ray cluster of a sharded gallery (gallery: its .json manifest)
    spin_wait: bool = True  # ONNX Runtime's threads spin-wait after a batch (0: they sleep, for busy hosts)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, Any] = {field: env[name] for field, name in ENV.items() if env.get(name)}
        for field, fix in SWITCHES.items():
            if field in values:
                value = values[field]
                if value.lower() not in SWITCH:
                    raise InputError(f"{ENV[field]}={value!r}, expected 1 or 0 (true/false, yes/no); {fix}")
                values[field] = SWITCH[value.lower()]
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables for these settings (the unset ones empty, so none is inherited)."""
        def text(value: object) -> str:
            return "" if value is None else "1" if value is True else "0" if value is False else str(value)

        return {name: text(getattr(self, field)) for field, name in ENV.items()}


def artifact_of(args: dict[str, Any]) -> Path:
    """The artefact folder: the repository is its ``triton/``, and args name the model's folder in it."""
    return Path(args["model_repository"]).resolve().parents[1]


def error_of(pb: Any, exc: BaseException) -> Any:
    """The TritonError a client gets for ``exc`` (one line; INVALID_ARG for an engine error)."""
    if isinstance(exc, JLMLError):
        return pb.TritonError(" ".join(str(exc).split()), pb.TritonError.INVALID_ARG)
    print(f"jlml: {''.join(traceback.format_exception(exc))}", file=sys.stderr, flush=True)
    return pb.TritonError(INTERNAL_LINE, pb.TritonError.INTERNAL)


def _inputs(request: Any) -> Request:
    return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}


class _Model:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb

        self.pb, self.settings = pb, Settings.from_env()
        self.artifact, self.name = artifact_of(args), json.loads(args["model_config"])["name"]

    def _answer(self, fn: Callable[[Request], Response], request: Any) -> Any:
        try:
            out = fn(_inputs(request))
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
            return self.pb.InferenceResponse(error=error_of(self.pb, exc))
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(k, v) for k, v in out.items()])


class EmbedModel(_Model):
    """``embed`` through engine.Embedder: Triton's dynamic batcher hands over several requests, which
    run as one batch (at most the artefact's max batch, which the config declares)."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        s = self.settings
        self.embedder = Embedder(self.artifact, backend=s.backend, device=s.device, precision=s.precision,
                                 spin_wait=s.spin_wait)
        print(f"jlml: {EMBED_MODEL}: {self.embedder} ({self.embedder.choice})", flush=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [self.pb.get_input_tensor_by_name(r, IMAGES).as_numpy() for r in requests]
        try:
            out = self.embedder(batches[0] if len(batches) == 1 else np.concatenate(batches))
        except Exception as exc:  # noqa: BLE001 - the whole batch failed; each request says so
            return [self.pb.InferenceResponse(error=error_of(self.pb, exc)) for _ in requests]
        parts = np.split(out, np.cumsum([len(b) for b in batches])[:-1])
        return [self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(EMBEDDINGS, p)]) for p in parts]

    def finalize(self) -> None:
        self.embedder.close()


class _GalleryModel(_Model):
    """The gallery file's service; query images are embedded by ``embed`` (BLS), the one batched model.
    A gallery another model embedded fails the model's load (unless JLML_ALLOW_OTHER_MODEL=1), so a
    plain tritonserver on this repository refuses it too; ``search`` warns of one that records no model."""

    warn = False

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        s = self.settings
        path = None if s.gallery is None else Path(s.gallery)
        self.service = GalleryService(self._embed, ModelSpec.load(self.artifact), path, device=s.gallery_device,
                                      artifact=f"artefact {self.artifact}", allow_other_model=s.allow_other_model,
                                      warn=self.warn, ray=s.ray)

    def finalize(self) -> None:
        self.service.close()  # a sharded gallery's actors end with the last model that holds them

    def _embed(self, images: np.ndarray) -> np.ndarray:
        request = self.pb.InferenceRequest(model_name=EMBED_MODEL, requested_output_names=[EMBEDDINGS],
                                           inputs=[self.pb.Tensor(IMAGES, np.ascontiguousarray(images))])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.name}: {EMBED_MODEL} failed: {response.error().message()}")
        return self.pb.get_output_tensor_by_name(response, EMBEDDINGS).as_numpy()


class SearchModel(_GalleryModel):
    warn = True

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        query = np.zeros((1, self.service.spec.embedding_dim), np.float32)
        self.service.search({EMBEDDINGS: query, K: np.array([1], np.int32)})  # ready means answering

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(self.service.search, r) for r in requests]


class AddModel(_GalleryModel):
    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(self.service.add, r) for r in requests]

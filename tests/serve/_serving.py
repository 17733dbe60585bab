"""Helpers for the serve tests: pixels, a gallery file, free ports and a real `python -m serve` process.

Servers run as the command a user types (serve.process: a subprocess on free loopback ports), so
start-up, the library-path fix, signals and exit codes are what is tested.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import Embedder, ModelSpec
from engine.gallery import Gallery
from engine.search.file import model_fingerprint
from serve.process import ServerProcess, free_ports  # noqa: F401 - tests import it from here

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-5  # ORT CPU rows may differ in the last bits when the dynamic batcher merges requests


def pixels(n: int, seed: int) -> np.ndarray:
    """uint8 images of the test artefact's 32x16 input."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 16, 3), dtype=np.uint8)


def gallery_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two images per id (duplicate ids are the re-id norm) on alternating cameras."""
    return np.arange(n, dtype=np.int64) // 2, np.arange(n, dtype=np.int64) % 2


def other_model(spec: ModelSpec) -> str:
    """The fingerprint of another model of the same contract and size (another ONNX graph)."""
    return model_fingerprint(spec.replace(onnx_sha256="0" * 64))


def write_gallery(path: Path, embedder: Embedder, images: np.ndarray, fingerprint: str | None = None) -> Path:
    """A gallery file as engine.embed writes it: rows, labels and each row's image name; ``fingerprint``:
    the model it records (None: none, as files written before fingerprints)."""
    ids, cams = gallery_labels(len(images))
    gallery = Gallery(embedder.spec.embedding_dim)
    gallery.images_root, gallery.model_fingerprint = str(path.parent), fingerprint
    gallery.add(embedder(images), ids, cams, paths=[f"row{n:04d}.png" for n in range(len(images))])
    gallery.save(path)
    return path


def start_server(artifact: Path, log: Path, gallery: Path | None = None) -> ServerProcess:
    """The real command on free loopback ports, the ORT CPU backend (what local_embedder runs)."""
    return ServerProcess.start(artifact, log, gallery=gallery, extra=("--backend", "ort", "--device", "cpu"))

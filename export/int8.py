"""INT8 ONNX graphs: static QDQ quantisation calibrated on real person crops, published only past a gate.

``python -m export.build_engine CKPT --out DIR --int8 --calib-data IMAGES`` adds ``model.int8.onnx``
(for ONNX Runtime on CPUs, saturation-free on every x86 CPU; served by ONNX Runtime only: its UINT8
activations have non-zero zero points, which TensorRT's ONNX parser rejects) and ``model.int8.trt.onnx``
(zero points 0, for TensorRT); why two, and how each is quantised: ``export.int8_graph``. Input (uint8 pixels) and
output (FP32 unit vectors) are unchanged, and preprocessing and everything after the last GEMMs stay FP32.

Both graphs are published only if they pass the gate: min per-row cosine and tie-aware top-k
agreement against PyTorch FP32 (thresholds below) on images calibration did not see, and, for the CPU
graph where VIPeR is under ``--data-root``, Rank-1 within RANK1_MAX_DROP points of the FP32 model on
its test split. The gate's images, their FP32 embeddings (``int8_parity.npz``) and the CPU it ran on
(``spec.int8_gate``) travel with the artefact, so ``engine.int8_guard`` re-checks the CPU graph before
serving it on a CPU whose 8-bit path differs.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.atomic import write_bytes, write_text
from engine.backends.ort import OrtBackend
from engine.cpu import cpu_features
from engine.embedder import Embedder
from engine.errors import InputError, ParityError
from engine.images import IMAGE_SUFFIXES
from engine.parity import ParityResult, compare
from engine.spec import INT8_PARITY_FILE, SPEC_FILE, ModelSpec, file_sha256

from .int8_graph import CPU, SCHEMES, TENSORRT, Scheme, to_int8
from .parity import image_files, reference_embeddings, sample_images

if TYPE_CHECKING:
    import torch

GATE_FILE = "int8_gate.json"
FILES = (*(s.file for s in SCHEMES), GATE_FILE, INT8_PARITY_FILE)
MIN_COSINE = 0.98  # per-row cosine to PyTorch FP32 (FP16 needs 0.999; INT8 rounds every activation)
MIN_TOPK_AGREEMENT = 0.9  # tie-aware top-5 agreement inside the parity batch
RANK1_MAX_DROP = 1.0  # Rank-1 points below the FP32 model on a VIPeR split
CALIB_IMAGES = 256
PARITY_IMAGES = 32
MIN_CALIB_FILES = PARITY_IMAGES + 2  # the gate's images and at least 2 to calibrate on


@dataclass(frozen=True)
class Int8Gate:
    """The figures the INT8 graph is published on."""

    parity: ParityResult
    min_topk_agreement: float
    rank1_fp32: float | None = None
    rank1_int8: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        rank_ok = self.rank1_fp32 is None or self.rank1_int8 is not None and \
            self.rank1_fp32 - self.rank1_int8 <= RANK1_MAX_DROP
        return self.parity.passed and self.parity.topk_agreement >= self.min_topk_agreement and rank_ok

    def line(self) -> str:
        rank = (f", Rank-1 {self.rank1_int8:.2f} vs FP32 {self.rank1_fp32:.2f} (max drop {RANK1_MAX_DROP})"
                if self.rank1_fp32 is not None else f", Rank-1 not measured ({self.note})")
        return f"{self.parity.line()} (top-k >= {self.min_topk_agreement}){rank}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def check_calib_data(folder: str | os.PathLike[str] | None) -> Path:
    """``folder`` if it is a folder to calibrate on, else InputError (checked before any export work)."""
    if folder is None:
        raise InputError("--int8 needs --calib-data DIR, a folder of real person crops to calibrate on")
    if not Path(folder).is_dir():
        raise InputError(f"--calib-data {folder} is not a folder; pass a folder of person crops (e.g. VIPeR)")
    found = len(image_files(folder, MIN_CALIB_FILES))
    if found < MIN_CALIB_FILES:
        raise InputError(f"--calib-data {folder} holds {found} images ({', '.join(IMAGE_SUFFIXES)}), expected at "
                         f"least {MIN_CALIB_FILES} ({PARITY_IMAGES} held out for the gate, the rest to calibrate "
                         f"on; up to {CALIB_IMAGES + PARITY_IMAGES} are used); pass a folder of person crops")
    return Path(folder)


def rank1(embed: Callable[[np.ndarray], np.ndarray], data: Any) -> float:
    """Rank-1 in percent (engine.metrics gives fractions) of ``embed(images) -> unit vectors`` on a split."""
    from engine.metrics import evaluate

    metrics = evaluate(embed(data.query_images), data.query_pids, data.query_cams, embed(data.gallery_images),
                       data.gallery_pids, data.gallery_cams, protocol=data.protocol)
    return 100.0 * float(metrics["rank1"])


def gate(model: torch.nn.Module, folder: Path, samples: np.ndarray, reference: np.ndarray,
         data: Any = None, note: str = "") -> dict[str, Int8Gate]:
    """Parity of ``folder``'s INT8 graphs (ONNX Runtime CPU) against the FP32 ``reference`` embeddings
    of ``samples``, plus Rank-1 of the served CPU graph on ``data`` (a re-id split) if given."""
    results = {}
    for scheme in SCHEMES:
        parity = compare(scheme.name, reference, _embed(folder, scheme, samples), threshold=MIN_COSINE)
        results[scheme.name] = Int8Gate(parity, MIN_TOPK_AGREEMENT, note=f"Rank-1 gated on {CPU.file}")
    if data is None:
        results[CPU.name] = Int8Gate(results[CPU.name].parity, MIN_TOPK_AGREEMENT, note=note or "no VIPeR data")
        return results

    def torch_embed(images: np.ndarray) -> np.ndarray:
        return np.concatenate([reference_embeddings(model, images[s:s + 64]) for s in range(0, len(images), 64)])

    with Embedder(folder, backend="ort", device="cpu", precision="int8") as served:
        results[CPU.name] = Int8Gate(results[CPU.name].parity, MIN_TOPK_AGREEMENT, rank1(torch_embed, data),
                                     rank1(served, data))
    return results


def _embed(folder: Path, scheme: Scheme, images: np.ndarray) -> np.ndarray:
    """The CPU graph served as users get it (fingerprint and CPU checks included); the TensorRT graph by file."""
    if scheme is CPU:
        with Embedder(folder, backend="ort", device="cpu", precision="int8") as served:
            return served(images)
    with OrtBackend(folder, device="cpu", precision="int8", graph=folder / scheme.file) as graph:
        step = graph.max_batch
        return np.concatenate([graph(images[i:i + step]) for i in range(0, len(images), step)])


def check(results: dict[str, Int8Gate]) -> None:
    failed = [f"{name}: {r.line()}" for name, r in results.items() if not r.passed]
    if failed:
        raise ParityError(f"INT8 graph below the gate, not published: {'; '.join(failed)}; calibrate on more "
                          "or more typical images (--calib-data), or publish without --int8")


def viper_split(spec: ModelSpec, root: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """(VIPeR test split at the spec's size, "") or (None, why not): the Rank-1 gate's data."""
    from engine.errors import DataError
    from train.data import load_reid_set

    try:
        return load_reid_set("viper", root, height=spec.height, width=spec.width, progress=False), ""
    except DataError as exc:
        return None, f"VIPeR not loaded: {exc}"


def write_parity_set(path: Path, images: np.ndarray, reference: np.ndarray) -> str:
    """``int8_parity.npz`` (the gate's images and FP32 embeddings, what the engine re-checks with); its sha256."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, reference=reference.astype(np.float32))
    write_bytes(path, buffer.getvalue())
    return file_sha256(path)


def build(model: torch.nn.Module, spec: ModelSpec, fp32_path: str | os.PathLike[str], stage: Path,
          calib_dir: str | os.PathLike[str], say: Callable[[str], None] = print,
          data_root: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Quantise, gate and write both INT8 graphs, ``int8_parity.npz`` and ``int8_gate.json`` into ``stage``;
    return ``spec`` fingerprinting them and recording the CPU the gate ran on (saved in ``stage``).

    Parity is measured on real images from ``calib_dir`` that calibration did not see; Rank-1 on VIPeR
    under ``data_root`` (None: $JLML_DATA or ../shared/data) when it is there. Raises ParityError
    (nothing of the build is published) when a graph fails the gate.
    """
    images = sample_images(spec, check_calib_data(calib_dir), count=CALIB_IMAGES + PARITY_IMAGES, flag="--calib-data")
    calib, samples = images[:-PARITY_IMAGES], images[-PARITY_IMAGES:]
    reference = reference_embeddings(model, samples)
    paths = {s.name: to_int8(fp32_path, spec, calib, stage / s.file, s) for s in SCHEMES}
    here = cpu_features()
    spec = spec.replace(onnx_int8_sha256=file_sha256(paths[CPU.name]),
                        onnx_int8_trt_sha256=file_sha256(paths[TENSORRT.name]),
                        int8_parity_sha256=write_parity_set(stage / INT8_PARITY_FILE, samples, reference),
                        int8_gate={"cpu": here, "min_cosine": MIN_COSINE, "min_topk_agreement": MIN_TOPK_AGREEMENT})
    spec.save(stage / SPEC_FILE)
    data, note = viper_split(spec, data_root)
    results = gate(model, stage, samples, reference, data, note)
    for name, result in results.items():
        say(f"{name} gate {'passed' if result.passed else 'FAILED'} on {here['int8_path']}: {result.line()}")
    record = {"cpu": here, **{name: r.as_dict() for name, r in results.items()}}
    write_text(stage / GATE_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    check(results)
    return spec

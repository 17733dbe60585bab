"""Never serve an INT8 graph unchecked: re-run its gate's parity check where the 8-bit path differs.

An INT8 graph is gated (``export.int8``) on the machine that built it, but its numbers depend on the
CPU's 8-bit dot product (``engine.cpu``): a graph that passes on a VNNI CPU can saturate on an AVX2
one. ``spec.json`` records the CPU family the gate ran on and ``int8_parity.npz`` holds the gate's
images with the FP32 PyTorch embeddings of them. Opening ``model.int8.onnx`` on another family (or on
a GPU) first embeds those images and compares them with the recorded thresholds (a few hundred
milliseconds); below them it refuses to serve and says how to re-gate.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cpu
from .errors import ArtifactError, ParityError
from .parity import compare
from .spec import INT8_PARITY_FILE, ModelSpec

_log = logging.getLogger(__name__)
REGATE = ("re-gate it on this kind of machine with `python -m export.build_engine CHECKPOINT --out DIR "
          "--int8 --calib-data FOLDER`, or serve precision='fp32'")


def serving_path(device: str) -> str:
    """The 8-bit path that serves on ``device``: the CPU's family, or the GPU provider's."""
    return cpu.cpu_features()["int8_path"] if device == "cpu" else f"onnxruntime-{device.split(':')[0]}"


def check_served_here(folder: Path, spec: ModelSpec, device: str,
                      embed: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any] | None:
    """Return None when ``device`` has the gated 8-bit path; else re-run the parity check with ``embed``
    (the opened INT8 backend, called with at most ``spec.max_batch`` images) and return its figures,
    or raise ParityError when they are below the gate.

    Raises ArtifactError when the artefact has no gate record (exported before this check existed).
    """
    gate = spec.int8_gate
    gated = gate.get("cpu", {}).get("int8_path")
    if not gated or not spec.int8_parity_sha256:
        raise ArtifactError(f"{folder}/spec.json records no INT8 gate (the CPU it ran on and its parity "
                            "images), so model.int8.onnx cannot be checked before it is served; re-export "
                            "the folder with `python -m export.build_engine ... --int8`")
    here = serving_path(device)
    if here == gated and here != "unknown":
        return None
    images, reference = _parity_set(folder, spec)
    step = spec.max_batch
    served = np.concatenate([embed(images[i:i + step]) for i in range(0, len(images), step)])
    result = compare("int8", reference, served, threshold=float(gate["min_cosine"]))
    ok = result.passed and result.topk_agreement >= float(gate["min_topk_agreement"])
    where = f"model.int8.onnx was gated on {gated}, this is {here}"
    if not ok:
        raise ParityError(f"{where}, and here it is below its gate: {result.line()} (top-k >= "
                          f"{gate['min_topk_agreement']}); not served: {REGATE}")
    _log.info("%s; re-checked before serving: %s", where, result.line())
    return {"gated_on": gated, "served_on": here, "min_cosine": result.min_cosine,
            "topk_agreement": result.topk_agreement}


def _parity_set(folder: Path, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The gate's (images, FP32 reference embeddings), fingerprint-checked against spec.json."""
    path = folder / INT8_PARITY_FILE
    if not path.is_file():
        raise ArtifactError(f"no {INT8_PARITY_FILE} in {folder}: the INT8 gate's images are needed to check "
                            f"model.int8.onnx on this CPU; copy the whole artefact folder, or {REGATE}")
    spec.check_fingerprint(path, "int8_parity_sha256")
    with np.load(path, allow_pickle=False) as npz:
        return npz["images"], npz["reference"]

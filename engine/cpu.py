"""Which 8-bit integer path this CPU gives ONNX Runtime, so an INT8 artefact knows where it was gated.

ONNX Runtime's INT8 convolutions and GEMMs on x86 multiply unsigned 8-bit activations by signed 8-bit
weights. With VNNI (``vpdpbusd``: AVX512_VNNI or AVX-VNNI) the products are summed straight into 32
bits. Without it (AVX2, AVX-512 without VNNI, SSE4.1) ``vpmaddubsw`` adds each pair of products into
a *saturating* 16-bit integer first, so the same graph can give other numbers on another CPU. ARM
uses ``sdot``/``udot`` (32-bit sums). ``int8_path`` names these families; ``export.int8`` records the
one its gate ran on in ``spec.json`` and ``engine.int8_guard`` compares it with the serving CPU's.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def _flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where that file is absent."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_features() -> dict[str, Any]:
    """This CPU's architecture and the features that choose ONNX Runtime's 8-bit kernels."""
    flags = _flags()
    features: dict[str, Any] = {
        "machine": platform.machine().lower(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags and "avx512bw" in flags,
        "vnni": any(f in flags for f in VNNI_FLAGS),
        "known": bool(flags),  # False: flags could not be read, the path is unknown
    }
    features["int8_path"] = int8_path(features)
    return features


def int8_path(features: dict[str, Any]) -> str:
    """The 8-bit dot-product family of a CPU: ``x86-vnni`` (32-bit sums), ``x86-avx512``,
    ``x86-avx2``, ``x86-sse`` (saturating 16-bit pair sums), ``arm64``, or ``unknown``."""
    machine = str(features.get("machine", ""))
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if machine not in ("x86_64", "amd64") or not features.get("known", False):
        return "unknown"
    if features.get("vnni"):
        return "x86-vnni"
    return "x86-avx512" if features.get("avx512") else "x86-avx2" if features.get("avx2") else "x86-sse"

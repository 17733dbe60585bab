"""A short speed summary for the demo: the served engine against PyTorch FP32, the Gallery against faiss.

Two small runs of the real benchmarks (one batch size, one gallery size, few calls), called as
library functions, so the demo ends with figures measured the same way as the full reports, in
seconds rather than minutes. Writes latency.json/.md/.png (the latency benchmark's own report) and
summary.json (both tables) into ``out_dir``; for figures to quote run the full benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import gallery, latency
from benchmarks.common import environment, write_json
from benchmarks.harness import Report

BATCH = 32
GALLERY_SIZE = 10_000
QUERY_BATCH = 100
QUERIES = 200
REPEATS = 5
BACKENDS = ("ort-fp32", "ort-fp16", "trt-fp16", "torch-fp16")


def embedding_speed(artifact_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str]) -> Report:
    """Images/s at batch ``BATCH`` per backend, with the ratio to PyTorch FP32 eager."""
    options = latency.LatencyOptions(batches=(BATCH,), backends=BACKENDS, repeats=REPEATS, min_seconds=0.0)
    return latency.run(artifact_dir, checkpoint, options)


def search_speed(dim: int = 1024, device: str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """Queries/s of every search method on a ``GALLERY_SIZE`` x ``dim`` gallery of random unit vectors,
    batch ``QUERY_BATCH``, with the ratio to faiss (``benchmarks.gallery``'s measurement)."""
    flags = {"--device": device, "--sizes": GALLERY_SIZE, "--batches": QUERY_BATCH, "--dims": dim,
             "--queries": QUERIES, "--repeats": REPEATS, "--rounds": REPEATS, "--seed": seed}
    cfg = gallery._settings(gallery._parser().parse_args([str(x) for item in flags.items() for x in item]))
    return gallery._bench_cell("unit", dim, GALLERY_SIZE, cfg, np.random.default_rng(seed))


def run(artifact_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
        out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Both figures, printed, written into ``out_dir`` and returned as {"embedding": rows, "gallery": rows}."""
    out = Path(out_dir)
    report = embedding_speed(artifact_dir, checkpoint)
    latency.write_outputs(report, out)
    embed = [{k: r[k] for k in ("backend", "device", "batch", "images_per_s", "vs_torch_fp32")}
             for r in report.results]
    search = [{k: r.get(k) for k in ("method", "size", "batch", "queries_per_s", "vs_faiss")}
              for r in search_speed()]
    summary = {"embedding": embed, "gallery": search}
    write_json(out / "summary.json", {**summary, "environment": environment("cpu")})
    print("speed: " + "; ".join(f"{r['backend']} {r['images_per_s']:.0f} img/s ({r['vs_torch_fp32']:.2f}x torch fp32)"
                                for r in embed if r["vs_torch_fp32"] is not None))
    print("search: " + "; ".join(f"{r['method']} {r['queries_per_s']:.0f} q/s"
                                 + (f" ({r['vs_faiss']:.2f}x faiss)" if r["vs_faiss"] else "") for r in search))
    return summary

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
from benchmarks.common import environment, markdown_table, write_json
from benchmarks.harness import Report
from engine.spec import ModelSpec

BATCH = 32
GALLERY_SIZE = 10_000
QUERY_BATCH = 100
QUERIES = 200
REPEATS = 5
DIM, K = 1024, 10
BACKENDS = ("ort-fp32", "ort-fp16", "trt-fp16", "torch-fp16")


def embedding_speed(artifact_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str]) -> Report:
    """Images/s at batch ``BATCH`` per backend, with the ratio to PyTorch FP32 eager."""
    options = latency.LatencyOptions(batches=(BATCH,), backends=BACKENDS, repeats=REPEATS, min_seconds=0.0)
    return latency.run(artifact_dir, checkpoint, options)


def search_speed(dim: int = DIM, device: str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """Queries/s of every search method on a ``GALLERY_SIZE`` x ``dim`` gallery of random unit vectors,
    batch ``QUERY_BATCH``, with the ratio to faiss (``benchmarks.gallery``'s measurement)."""
    flags = {"--device": device, "--sizes": GALLERY_SIZE, "--batches": QUERY_BATCH, "--dims": dim,
             "--queries": QUERIES, "--repeats": REPEATS, "--rounds": REPEATS, "--seed": seed, "--k": K}
    cfg = gallery._settings(gallery._parser().parse_args([str(x) for item in flags.items() for x in item]))
    return gallery._bench_cell("unit", dim, GALLERY_SIZE, cfg, np.random.default_rng(seed))


def run(artifact_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
        out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Both figures, printed as titled tables with their shapes, the machine's load and what to run next,
    written into ``out_dir`` and returned as {"embedding": rows, "gallery": rows, ...}."""
    out = Path(out_dir)
    report = embedding_speed(artifact_dir, checkpoint)
    latency.write_outputs(report, out)
    embed = [{k: r[k] for k in EMBED_COLUMNS} for r in report.results]
    search = [{k: r.get(k) for k in SEARCH_COLUMNS} for r in search_speed()]
    env = environment("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    summary = {"embedding": embed, "gallery": search, "load_average_1min": load,
               "stalled": [_name(r) for r in embed + search if _stalled(r)]}
    write_json(out / "summary.json", {**summary, "environment": env})
    print(format_summary(summary, ModelSpec.load(artifact_dir), env, artifact_dir, checkpoint, out), end="")
    return summary


EMBED_COLUMNS = ("backend", "device", "batch", "p50_ms", "p99_ms", "images_per_s", "vs_torch_fp32")
SEARCH_COLUMNS = ("method", "size", "batch", "p50_ms", "p99_ms", "queries_per_s", "vs_faiss")
STALL_RATIO = 5.0  # p99 this many times p50: the machine stalled the run, its ratios are unreliable


def _name(row: dict[str, Any]) -> str:
    return str(row.get("backend") or row.get("method"))


def _stalled(row: dict[str, Any]) -> bool:
    return bool(row.get("p50_ms")) and row["p99_ms"] > STALL_RATIO * row["p50_ms"]


def format_summary(summary: dict[str, Any], spec: ModelSpec, env: dict[str, Any], artifact_dir: Any,
                   checkpoint: Any, out: Path) -> str:
    """The demo's speed section: titled tables with their shapes, the load, a word on stalls, next steps."""
    load = summary["load_average_1min"]
    lines = [f"\n## Speed (a short run: {env['cpu']}, {env['cpu_count']} cores, "
             f"load average {'-' if load is None else f'{load:.2f}'} at the start; figures to quote come "
             "from the full benchmarks below)\n",
             f"Embedding: batch {BATCH} of {spec.height}x{spec.width} uint8 images -> {spec.embedding_dim}-D, "
             f"{REPEATS} timed calls per backend; vs_torch_fp32 = images/s over PyTorch FP32 eager's.\n",
             markdown_table(summary["embedding"], EMBED_COLUMNS),
             f"Gallery search: {GALLERY_SIZE:,} x {DIM} random unit vectors, {QUERY_BATCH} queries per call, "
             f"k={K}; vs_faiss = queries/s over faiss IndexFlatL2's.\n",
             markdown_table(summary["gallery"], SEARCH_COLUMNS)]
    if summary["stalled"]:
        lines.append(f"Note: {', '.join(summary['stalled'])} stalled (p99 above {STALL_RATIO:g}x p50): the "
                     "machine was busy, so the ratios above are unreliable; rerun on a quiet machine.\n")
    lines.append("Next: the full figures and plots (minutes):\n"
                 f"  python -m benchmarks.latency --artifact {artifact_dir} --checkpoint {checkpoint} "
                 f"--out {out / 'latency'}\n"
                 f"  python -m benchmarks.gallery --out {out / 'gallery'}\n"
                 f"  python -m serve {artifact_dir}   # then engine.client.TritonClient, see README.md\n")
    return "\n".join(lines)

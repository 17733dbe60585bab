"""A short speed summary for the demo: the served engine against PyTorch FP32, the Gallery against faiss.

Two small runs of the real benchmarks (one batch size, one gallery size, few calls) so the demo ends
with figures measured the same way as the full reports, in seconds rather than minutes. Both write
their usual JSON/markdown/PNG into ``out_dir``; for figures to quote run the full benchmarks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks import gallery, latency
from engine.errors import JLMLError

BATCH = 32
GALLERY_SIZE = 10_000
QUERY_BATCH = 100
QUERIES = 200
REPEATS = 5


def run(artifact_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
        out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Embedding images/s (batch 32) per backend with its ratio to PyTorch FP32 eager, and Gallery
    queries/s (10,000 x 1024, batch 100) with its ratio to faiss; printed and returned."""
    out = Path(out_dir)
    code = latency.main([str(artifact_dir), "--checkpoint", str(checkpoint), "--batches", str(BATCH),
                         "--backends", "ort-fp32", "ort-fp16", "trt-fp16", "torch-fp16", "--no-compile",
                         "--repeats", str(REPEATS), "--min-seconds", "0", "--out", str(out)])
    if code != 0:
        raise JLMLError(f"benchmarks.latency exited {code}; see the lines above")
    code = gallery.main(["--sizes", str(GALLERY_SIZE), "--batches", str(QUERY_BATCH), "--queries", str(QUERIES),
                         "--repeats", str(REPEATS), "--rounds", str(REPEATS), "--out", str(out)])
    if code != 0:
        raise JLMLError(f"benchmarks.gallery exited {code}; see the lines above")
    embed = [{k: r[k] for k in ("backend", "device", "batch", "images_per_s", "vs_torch_fp32")}
             for r in json.loads((out / "latency.json").read_text())["results"]]
    search = [{k: r.get(k) for k in ("method", "size", "batch", "queries_per_s", "vs_faiss")}
              for r in json.loads((out / "gallery.json").read_text())["results"]]
    print("speed: " + "; ".join(f"{r['backend']} {r['images_per_s']:.0f} img/s ({r['vs_torch_fp32']:.2f}x torch fp32)"
                                for r in embed))
    print("search: " + "; ".join(f"{r['method']} {r['queries_per_s']:.0f} q/s"
                                 + (f" ({r['vs_faiss']:.2f}x faiss)" if r["vs_faiss"] else "") for r in search))
    return {"embedding": embed, "gallery": search}

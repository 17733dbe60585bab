"""End to end, decoded images to ranked lists: ``python -m benchmarks.e2e ARTIFACT_DIR``.

What is timed, per backend and query batch size: embedding a batch of query images that are already
decoded and resized (uint8 NHWC arrays in memory; JPEG decoding and resizing are not timed) and
searching an ``engine.Gallery`` for their ``k`` nearest gallery entries (ranked ids back on the host).
The gallery is embedded beforehand by the same backend, outside the timed loop; that one-off cost is
reported separately (gallery_images_per_s). Pixels are random uint8 (throughput does not depend on
content); rank agreement with the PyTorch FP32 baseline (tie-aware, engine.parity) is reported so a fast
but wrong backend shows.
Writes e2e.json and e2e.md into ``--out``. Exit codes: 0 ok, 2 usage or input errors.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.candidates import (
    BASELINE,
    CANDIDATES,
    Candidate,
    artifact_spec,
    load_module,
    measure,
    open_embedder,
    pick,
    resolve_device,
)
from benchmarks.common import markdown_table, summarize, time_calls
from engine.atomic import write_text
from engine.gallery import Gallery
from engine.parity import ranking_agreement

DEFAULT_BACKENDS = ["torch-fp32", "torch-fp16", "ort-fp32", "ort-fp16", "trt-fp16"]
FULL = {"gallery_size": 1000, "batches": [1, 32], "repeats": 10}
QUICK = {"gallery_size": 64, "batches": [1, 8], "repeats": 3}
COLUMNS = ["backend", "batch", "p50_ms", "p99_ms", "queries_per_s", "vs_torch_fp32", "gallery_images_per_s",
           "topk_agreement"]


def _bench_candidate(cand: Candidate, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Embed the gallery once (timed apart), then time embed + search per query batch size."""
    with open_embedder(cand, ctx["folder"], ctx["device"], ctx["module"]) as embed:
        tic = time.perf_counter()
        gallery = Gallery(embed.spec.embedding_dim, device=ctx["device"])
        gallery_emb = embed(ctx["gallery"])
        gallery.add(gallery_emb, np.arange(len(ctx["gallery"])))
        gallery_rate = len(ctx["gallery"]) / (time.perf_counter() - tic)

        def rank(queries: np.ndarray) -> np.ndarray:
            return gallery.search(embed(queries), ctx["k"])[1]

        ids = rank(ctx["queries"])
        if cand.name == BASELINE:  # the baseline's embeddings rank the gallery for every candidate
            ctx["reference"].update(queries=embed(ctx["queries"]), gallery=gallery_emb)
        ref = ctx["reference"]
        agreement = ranking_agreement(ref["queries"], ref["gallery"], ids) if ref else None
        rows = []
        for batch in ctx["batches"]:
            queries = ctx["queries"][:batch]
            times = time_calls(lambda q=queries: rank(q), device=ctx["device"], warmup=ctx["warmup"],
                               repeats=ctx["repeats"])
            stats = summarize(times, items_per_call=batch)
            rows.append({"backend": cand.name, "device": embed.device, "batch": batch,
                         "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
                         "queries_per_s": stats["items_per_s"], "calls": stats["calls"],
                         "gallery_images_per_s": gallery_rate,
                         "topk_agreement": agreement})
            print(markdown_table(rows[-1:], COLUMNS[:5]).splitlines()[-1], flush=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact_dir", type=Path, help="artefact folder from `python -m export.build_engine`")
    p.add_argument("--checkpoint", type=Path, help="checkpoint the artefact came from (for the PyTorch baseline)")
    p.add_argument("--out", type=Path, default=Path("artifacts/bench"), help="output folder (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (ONNX Runtime keeps its own default)")
    p.add_argument("--quick", action="store_true", help="64-image gallery, batches 1 and 8: a smoke run")
    p.add_argument("--backends", nargs="+", default=DEFAULT_BACKENDS, metavar="NAME",
                   help=f"subset of {list(CANDIDATES)} (default: {DEFAULT_BACKENDS})")
    p.add_argument("--gallery-size", type=int, help="gallery images (default 1000; --quick 64)")
    p.add_argument("--batches", type=int, nargs="+", help="query batch sizes (default 1 32; --quick 1 8)")
    p.add_argument("--k", type=int, default=10, help="ranked ids per query (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per point (default: %(default)s)")
    p.add_argument("--repeats", type=int, help="timed calls per point (default 10; --quick 3)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _context(args: argparse.Namespace) -> tuple[list[Candidate], dict[str, Any], dict[str, Any]]:
    spec = artifact_spec(args)
    base = QUICK if args.quick else FULL
    settings = {"device": resolve_device(args.device), "k": args.k, "warmup": args.warmup, "seed": args.seed,
                "gallery_size": args.gallery_size or base["gallery_size"],
                "batches": sorted(set(args.batches or base["batches"])), "repeats": args.repeats or base["repeats"],
                "input": "random uint8 NHWC, already decoded and resized (not timed)",
                "timed": "embed query batch + Gallery.search (gallery embedded beforehand, not timed)",
                "model": f"{spec.height}x{spec.width} -> {spec.embedding_dim}-D", "checkpoint": str(args.checkpoint)}
    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 256, (settings["gallery_size"] + max(settings["batches"]), *spec.image_shape),
                          dtype=np.uint8)
    ctx = {"folder": args.artifact_dir, "module": load_module(args.checkpoint) if args.checkpoint else None,
           "gallery": pixels[:settings["gallery_size"]], "queries": pixels[settings["gallery_size"]:],
           "reference": {}, **{k: settings[k] for k in ("device", "k", "warmup", "batches", "repeats")}}
    return pick([BASELINE, *args.backends]), ctx, settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    measured = measure(args, _context, _bench_candidate, "queries_per_s", "e2e")
    if measured is None:
        return 2
    run, ctx = measured
    rows, skipped, settings, env = run["results"], run["skipped"], run["settings"], run["environment"]
    notes = "".join(f"- {name} skipped: {why}\n" for name, why in skipped.items())
    write_text(args.out / "e2e.md", f"# End to end, {env['device_name']} ({ctx['device']})\n\n"
               f"Timed: {settings['timed']}; gallery {settings['gallery_size']} images, k={args.k}; input "
               f"{settings['input']}.\n\n" + markdown_table(rows, COLUMNS) + ("\n" + notes if notes else ""))
    print(f"wrote {args.out}/e2e.json, e2e.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end, decoded images to ranked lists: ``python -m benchmarks.e2e --artifact DIR``.

What is timed, per backend and query batch size: embedding a batch of query images that are already
decoded and resized (uint8 NHWC arrays in memory; JPEG decoding and resizing are not timed) and
searching an ``engine.Gallery`` for their ``k`` nearest gallery entries (ranked ids back on the host).
The gallery is embedded beforehand by the same backend, outside the timed loop; that one-off cost is
reported separately (gallery_images_per_s). Pixels are random uint8 (throughput does not depend on
content); rank agreement with the PyTorch FP32 baseline (tie-aware,
engine.parity) is reported so a fast but wrong backend shows.
Writes e2e.json and e2e.md into ``--out``. Exit codes: 0 ok, 2 usage or input errors, or nothing could
be measured. From Python: ``run(artifact, checkpoint, E2EOptions(...))`` returns the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.backends import BASELINE, CANDIDATES, Candidate, open_embedder, pick, resolve_device
from benchmarks.common import markdown_table, summarize, time_calls
from benchmarks.harness import Report
from engine import cli
from engine.errors import InputError
from engine.gallery import Gallery
from engine.parity import ranking_agreement
from engine.spec import ModelSpec

DEFAULT_BACKENDS = ("torch-fp32", "torch-fp16", "ort-fp32", "ort-fp16", "trt-fp16")
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

        query_emb = embed(ctx["queries"])
        ids = gallery.search(query_emb, ctx["k"])[1]
        if cand.name == BASELINE:  # the baseline's embeddings rank the gallery for every candidate
            ctx["reference"].update(queries=query_emb, gallery=gallery_emb)
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


@dataclass(frozen=True)
class E2EOptions:
    """What ``run`` measures; the defaults are a full run (``QUICK`` is the smoke run)."""

    device: str = "auto"
    backends: tuple[str, ...] = DEFAULT_BACKENDS  # the baseline is always added and run first
    gallery_size: int = 1000           # gallery images, embedded before the timed loop
    batches: tuple[int, ...] = (1, 32)  # query batch sizes
    k: int = 10                         # ranked ids per query
    warmup: int = 2
    repeats: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        harness.check_positive(gallery_size=self.gallery_size, batches=self.batches, k=self.k, repeats=self.repeats)
        if self.warmup < 0:
            raise InputError(f"warmup={self.warmup}: expected 0 or more untimed calls")


QUICK = E2EOptions(gallery_size=64, batches=(1, 8), repeats=3)


def run(artifact: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
        options: E2EOptions = E2EOptions()) -> Report:
    """Embed + search rates of every backend in ``options`` serving ``artifact`` (``checkpoint``: the
    PyTorch baseline, the ratios and rank agreement); raises a JLMLError when nothing was measured."""
    spec = ModelSpec.load(artifact)
    settings = {**dataclasses.asdict(options), "device": resolve_device(options.device),
                "batches": sorted(set(options.batches)),
                "input": "random uint8 NHWC, already decoded and resized (not timed)",
                "timed": "embed query batch + Gallery.search (gallery embedded beforehand, not timed)",
                "model": f"{spec.height}x{spec.width} -> {spec.embedding_dim}-D", "checkpoint": str(checkpoint)}
    size = options.gallery_size
    pixels = np.random.default_rng(options.seed).integers(
        0, 256, (size + max(options.batches), *spec.image_shape), dtype=np.uint8)
    ctx = {"folder": Path(artifact), "gallery": pixels[:size], "queries": pixels[size:], "probe": pixels[:1],
           "module": harness.load_module(checkpoint, spec, artifact) if checkpoint else None, "reference": {},
           **{k: settings[k] for k in ("device", "k", "warmup", "batches", "repeats")}}
    return harness.measure(pick([BASELINE, *options.backends]), ctx, _bench_candidate, "queries_per_s", settings)


def _markdown(report: Report) -> str:
    settings, env = report.settings, report.environment
    return (f"# End to end, {env['device_name']} ({settings['device']})\n\n"
            f"Timed: {settings['timed']}; gallery {settings['gallery_size']} images, k={settings['k']}; input "
            f"{settings['input']}.\n\n" + markdown_table(report.results, COLUMNS) + harness.skipped_notes(report.skipped))


def write_outputs(report: Report, out: str | os.PathLike[str]) -> list[Path]:
    """e2e.json and e2e.md in ``out``."""
    return harness.write_report(report, out, "e2e", _markdown(report))


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.e2e", __doc__)
    cli.add_artifact(p)
    cli.add_checkpoint(p, "checkpoint the artefact came from (the PyTorch baseline, ratios, rank agreement)")
    cli.add_out(p, "artifacts/bench")
    cli.add_device(p)
    cli.add_threads(p)
    p.add_argument("--quick", action="store_true", help="64-image gallery, batches 1 and 8: a smoke run")
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), metavar="NAME",
                   help=f"subset of {list(CANDIDATES)}")
    p.add_argument("--gallery-size", type=cli.positive_int, help="gallery images (default 1000; --quick 64)")
    p.add_argument("--batches", type=cli.positive_int, nargs="+", help="query batch sizes (default 1 32; --quick 1 8)")
    p.add_argument("--k", type=cli.positive_int, default=E2EOptions.k, help="ranked ids per query")
    p.add_argument("--warmup", type=int, default=E2EOptions.warmup, help="untimed calls per point")
    p.add_argument("--repeats", type=cli.positive_int, help="timed calls per point (default 10; --quick 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    return p


def _options(args: argparse.Namespace) -> E2EOptions:
    base = QUICK if args.quick else E2EOptions()
    return dataclasses.replace(
        base, device=args.device, backends=tuple(args.backends), k=args.k, warmup=args.warmup, seed=args.seed,
        gallery_size=args.gallery_size or base.gallery_size, batches=tuple(args.batches or base.batches),
        repeats=args.repeats or base.repeats)


def main(argv: list[str] | None = None) -> int:
    return harness.bench_main(argv, _parser(), _options, run, write_outputs)


if __name__ == "__main__":
    sys.exit(main())

"""Approximate search where nothing else fits: ``python -m benchmarks.gallery_big --size 10000000``.

At 10^7 x 512 one FP32 copy of the rows is 20 GB, so the exact Gallery, faiss's IndexFlatL2 and an
approximate index cannot be held side by side as ``benchmarks.gallery`` does. Here the rows are
generated chunk by chunk (clustered unit vectors, as ``benchmarks.gallery --data clustered``) straight
into one approximate Gallery (default method "ivf-sq8" with FP16 storage: ~15 GB at 10^7 x 512) whose
capacity is reserved up front, and the exact reference is computed while it fills: faiss's exact
``knn`` of the queries against each chunk as stored, merged into the exact top-k (the ground truth of
recall@k) and timed per batch size on the first ``--exact-queries`` queries. Summed over the chunks,
that is the cost of one exact flat scan of the whole gallery (what IndexFlatL2 would do; it cannot be
held here). Then the approximate Gallery is timed per ``--nprobe`` and batch size: queries/s, speed-up
over the exact scan, recall@k against the exact top-k, and the index build (its first search).
Writes gallery_big.json and gallery_big.md. ``--quick`` is a smoke run in seconds, not a figure.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import environment, host_memory_mb, markdown_table, summarize, write_json
from benchmarks.gallery import CLUSTER_SIZE, SMOKE, around, recall_at_k, unit
from engine import cli
from engine.atomic import write_text
from engine.errors import InputError
from engine.gallery import Gallery
from engine.progress import progress
from engine.search.checks import STORAGES
from engine.search.plan import APPROXIMATE

FULL = {"size": 10_000_000, "dim": 512, "queries": 1000, "exact_queries": 100, "chunk": 1 << 18, "batches": [1, 100]}
QUICK = {"size": 20_000, "dim": 32, "queries": 64, "exact_queries": 16, "chunk": 4096, "batches": [1, 16]}
COLUMNS = ["size", "dim", "storage", "method", "nprobe", "batch", "p50_ms", "queries_per_s", "exact_queries_per_s",
           "speedup_vs_exact", "recall_at_k", "build_s"]


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.gallery_big", __doc__)
    p.add_argument("--out", type=Path, default=Path("artifacts/bench-big"), help="output folder")
    p.add_argument("--size", type=cli.positive_int, help=_sized("gallery rows", "size"))
    p.add_argument("--dim", type=cli.positive_int, help=_sized("embedding dim", "dim"))
    p.add_argument("--method", choices=APPROXIMATE, default="ivf-sq8", help="approximate method")
    p.add_argument("--storage", choices=STORAGES, default="float16", help="the Gallery's row storage")
    p.add_argument("--nprobe", type=cli.positive_int, nargs="+", default=[16, 64],
                   help="lists probed (IVF) or efSearch (HNSW), one measurement each")
    p.add_argument("--batches", type=cli.positive_int, nargs="+", help=_sized("query batch sizes", "batches"))
    p.add_argument("--queries", type=cli.positive_int, help=_sized("queries (recall is over all of them)", "queries"))
    p.add_argument("--exact-queries", type=cli.positive_int,
                   help=_sized("queries whose exact scan is timed per batch size (every query's is computed)",
                               "exact_queries"))
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="stop timing one (nprobe, batch) after this long (at least 3 calls)")
    p.add_argument("--chunk", type=cli.positive_int, help=_sized("rows generated and scanned at once", "chunk"))
    p.add_argument("--k", type=cli.positive_int, default=10, help="neighbours per query")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds (it sets the sizes "
                   "itself: with --size, --dim, --queries, --exact-queries, --chunk or --batches it is an error)")
    return p


def _sized(what: str, key: str) -> str:
    return f"{what} (default {FULL[key]}; --quick {QUICK[key]})"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    given = {key: getattr(args, key) for key in FULL if getattr(args, key) is not None}
    if args.quick and given:
        flags = " ".join(f"--{key.replace('_', '-')}" for key in given)
        raise InputError(f"--quick sets the sizes itself ({QUICK['size']} rows of dim {QUICK['dim']}), so {flags} "
                         f"would be ignored; drop --quick to run at {flags}, or drop {flags} for the smoke run")
    cfg = {**(QUICK if args.quick else FULL), **given}
    cfg.update({key: getattr(args, key) for key in ("method", "storage", "nprobe", "max_seconds", "k", "seed", "quick")})
    if cfg["k"] * CLUSTER_SIZE > cfg["size"] or max(cfg["batches"]) > cfg["queries"]:
        raise InputError(f"--size {cfg['size']} must hold at least {CLUSTER_SIZE} x --k rows and --queries "
                         f"{cfg['queries']} at least the largest --batches {max(cfg['batches'])}; raise them")
    cfg["exact_queries"] = min(cfg["exact_queries"], cfg["queries"])
    return cfg


def _fill(cfg: dict[str, Any], rng: np.random.Generator) -> tuple[Gallery, np.ndarray, np.ndarray, dict[int, Any]]:
    """(the approximate Gallery, queries, exact top-k ids (Q, k), batch -> exact seconds per timed batch)."""
    import faiss

    centres = unit(rng, cfg["size"] // CLUSTER_SIZE, cfg["dim"])
    queries = around(rng, centres, cfg["queries"]).astype(np.float32)
    gallery = Gallery(cfg["dim"], method=cfg["method"], storage=cfg["storage"])
    gallery.reserve(cfg["size"])
    k, size = cfg["k"], cfg["size"]
    best_d, best_i = np.full((len(queries), k), np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    exact_s = {b: np.zeros(max(1, cfg["exact_queries"] // b)) for b in cfg["batches"]}
    for start in progress(range(0, size, cfg["chunk"]), desc="fill + exact scan", unit="chunk"):
        rows = around(rng, centres, min(cfg["chunk"], size - start))
        gallery.add(rows, np.arange(start, start + len(rows)))
        stored = np.ascontiguousarray(rows.astype(cfg["storage"]), dtype=np.float32)  # as the Gallery holds them
        for b, spent in exact_s.items():
            for j in range(len(spent)):
                t = time.perf_counter()
                faiss.knn(queries[j * b:(j + 1) * b], stored, k)
                spent[j] += time.perf_counter() - t
        d, i = faiss.knn(queries, stored, k)
        best_d, best_i = _merge(best_d, best_i, d, i + start, k)
    return gallery, queries, best_i, exact_s


def _merge(d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d, i = np.concatenate([d1, d2], 1), np.concatenate([i1, i2], 1)
    order = np.lexsort((i, d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def _time_approx(gallery: Gallery, queries: np.ndarray, truth: np.ndarray, exact_s: dict[int, Any],
                 cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (nprobe, batch): the approximate search's speed, recall@k and speed-up."""
    k = cfg["k"]
    t = time.perf_counter()
    gallery.search(queries[:1], k)  # the index is built at the first search after the adds
    build_s = time.perf_counter() - t
    rows = []
    for nprobe in cfg["nprobe"]:
        gallery.nprobe = nprobe
        found = gallery.search(queries, k)[1]  # recall over every query (a search's ids do not depend on batching)
        recall = recall_at_k(found, truth)
        for b in cfg["batches"]:
            times: list[float] = []
            for s in range(0, len(queries) - b + 1, b):
                t = time.perf_counter()
                gallery.search(queries[s:s + b], k)
                times.append(time.perf_counter() - t)
                if len(times) >= 3 and sum(times) > cfg["max_seconds"]:
                    break
            p50 = summarize(times)["p50_ms"]
            exact_qps = b / float(np.median(exact_s[b]))
            rows.append({"size": cfg["size"], "dim": cfg["dim"], "storage": cfg["storage"], "method": cfg["method"],
                         "nprobe": nprobe, "batch": b, "p50_ms": p50, "queries_per_s": b / (p50 / 1e3),
                         "exact_queries_per_s": exact_qps, "speedup_vs_exact": b / (p50 / 1e3) / exact_qps,
                         "recall_at_k": recall, "build_s": build_s, "calls": len(times)})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    cli.check_out_dir(args.out)
    if cfg["quick"]:
        print(SMOKE)
    t = time.perf_counter()
    gallery, queries, truth, exact_s = _fill(cfg, np.random.default_rng(cfg["seed"]))
    fill_s = time.perf_counter() - t
    rows = _time_approx(gallery, queries, truth, exact_s, cfg)
    memory = host_memory_mb()
    table = markdown_table(rows, COLUMNS)
    print(table, end="")
    write_json(args.out / "gallery_big.json", {"environment": environment("cpu"), "settings": cfg,
                                               "fill_and_exact_s": fill_s, "memory": memory, "results": rows})
    title = "# Approximate Gallery at scale, cpu" + (f"\n\n**{SMOKE}**" if cfg["quick"] else "")
    write_text(args.out / "gallery_big.md", f"{title}\n\nfill + exact scan {fill_s:.0f} s, peak RSS "
               f"{memory['host_peak_rss_mb']:.0f} MiB\n\n{table}")
    print(f"wrote {args.out}/gallery_big.json, gallery_big.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

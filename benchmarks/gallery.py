"""Gallery search benchmark: engine.gallery.Gallery vs faiss IndexFlatL2 (and a plain torch matmul+topk).

``python -m benchmarks.gallery --out artifacts/bench`` times exact k-NN over unit vectors (random, and
clustered like real embeddings with ``--data clustered``) for each dim, gallery size and query batch.
Methods: ``gallery`` (method="auto": the path engine.search.plan picks per batch), ``faiss``
(IndexFlatL2, the reference), ``torch_naive`` (one un-chunked ``addmm`` + topk with the gallery's
norms computed once at build time, skipped where its block passes 2 GiB), with ``--paths`` the Gallery forced onto each path (``gallery_bf16``, ``gallery_fp32``,
``gallery_torch``, ``gallery_faiss``) to measure the crossovers, and with ``--approx`` the approximate
Gallery (``gallery_ivf``, ``gallery_hnsw``, ``gallery_ivf-sq8``; ``recall_at_k`` against faiss's exact ids, ``build_s`` the
first search after the add: index build plus one query). Calls are interleaved round-robin in one
process so load from other users hits all methods alike; medians are reported, and ``vs_faiss`` /
``vs_gallery`` are the ratios of queries/s to faiss's and to the exact auto Gallery's in the same process. ``agree_faiss`` is the
share of returned ids equal to faiss's in the timed calls themselves; ``path`` is the path the auto
Gallery took. Writes gallery.json (environment, settings, results), gallery.md and gallery.png (one
panel per batch size). ``--quick`` is a smoke run in seconds, marked as such everywhere; not a figure.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Panel,
    environment,
    markdown_table,
    plot_loglog_panels,
    summarize,
    time_calls,
    write_json,
)
from engine import cli
from engine.atomic import write_text
from engine.device import torch_device
from engine.errors import InputError
from engine.gallery import Gallery
from engine.search.plan import APPROXIMATE, EXACT

FULL: dict[str, Any] = {"sizes": [1_000, 10_000, 100_000, 1_000_000], "dims": [1024], "queries": 1000, "batches": [1, 10, 100, 1000]}
QUICK: dict[str, Any] = {"sizes": [1_000, 4_000], "dims": [64], "queries": 64, "batches": [1, 32]}
NAIVE_MAX_BYTES = 2 << 30  # the un-chunked baseline is skipped where its (batch x gallery) block is bigger
COLUMNS = ["data", "dim", "size", "batch", "method", "path", "p50_ms", "p99_ms", "queries_per_s", "vs_faiss",
           "vs_gallery", "agree_faiss", "recall_at_k", "build_s"]
CLUSTER_SIZE = 20  # rows per cluster ("images of one person")
CLUSTER_SPREAD = 0.5  # noise norm relative to the (unit) centre, before re-normalising
SMOKE = "SMOKE RUN (--quick): tiny sizes, not a figure"


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    for s in range(0, n, 1 << 16):  # in place, by blocks: no second gallery-sized array at 10^6 x 1024
        x[s:s + (1 << 16)] /= np.linalg.norm(x[s:s + (1 << 16)], axis=1, keepdims=True)
    return x


def _make_data(kind: str, rng: np.random.Generator, size: int, dim: int, n_q: int) -> tuple[np.ndarray, ...]:
    """Random unit vectors, or unit vectors around shared centres (near neighbours close, as re-id)."""
    if kind == "unit":
        return unit(rng, size, dim), unit(rng, n_q, dim)
    centres = unit(rng, max(1, size // CLUSTER_SIZE), dim)
    return around(rng, centres, size), around(rng, centres, n_q)


def around(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """``n`` unit vectors, each near a random one of ``centres`` (CLUSTER_SPREAD noise)."""
    x = centres[rng.integers(0, len(centres), n)] + CLUSTER_SPREAD * unit(rng, n, centres.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


Searchers = dict[str, Callable[[np.ndarray], np.ndarray]]


def _searchers(gallery: np.ndarray, cfg: dict[str, Any]) -> tuple[Searchers, Gallery, dict[str, float]]:
    """(name -> search(queries) -> ids for every method asked for and available, the auto Gallery,
    name -> seconds of the first one-query search after the add for the approximate methods: the
    index build, which ``method="ivf"`` / ``"hnsw"`` does lazily)."""
    import torch

    k, device = cfg["k"], cfg["device"]
    out: Searchers = {}
    galleries, build_s = {}, {}
    for path in ["auto", *cfg["paths"], *cfg["approx"]]:
        galleries[path] = gal = Gallery(gallery.shape[1], device=device, method=path)
        gal.add(gallery, np.arange(len(gallery)))
        name = "gallery" if path == "auto" else f"gallery_{path}"
        out[name] = _ids(gal, k)
        if path in cfg["approx"]:
            build_s[name] = sum(time_calls(_call(out[name], gallery[:1], []), device=device, warmup=0, repeats=1))
    if not cfg["naive"]:
        return out | _faiss(gallery, k, device), galleries["auto"], build_s
    dev_gallery = torch.from_numpy(gallery).to(device)
    # The norms once, outside the timed call, as any index keeps them (recomputing them per call was
    # an N x D temporary, 4 GB at 10^6 x 1024, that flattered the Gallery); ||q||^2 ranks nothing.
    sqnorm = (dev_gallery * dev_gallery).sum(1)

    def naive(q: np.ndarray) -> np.ndarray:
        qt = torch.from_numpy(q).to(device)
        d = torch.addmm(sqnorm, qt, dev_gallery.T, beta=1, alpha=-2)  # ||g||^2 - 2 q.g in one GEMM
        return torch.topk(d, k, dim=1, largest=False).indices.cpu().numpy()

    return out | {"torch_naive": naive} | _faiss(gallery, k, device), galleries["auto"], build_s


def _ids(gallery: Gallery, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: gallery.search(q, k)[1]


def _faiss(gallery: np.ndarray, k: int, device: str) -> Searchers:
    try:
        import faiss
    except ImportError:
        return {}
    index: Any = faiss.IndexFlatL2(gallery.shape[1])
    if device.startswith("cuda"):
        if not hasattr(faiss, "StandardGpuResources"):
            return {}  # faiss-gpu absent: a CPU index is no comparison for a GPU search (said on the plot)
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        index.res = res  # keep the resources alive with the index
    index.add(gallery)
    return {"faiss": lambda q: index.search(q, k)[1]}


def _bench_cell(kind: str, dim: int, size: int, cfg: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every batch size of one (data, dim, size): interleaved timings, agreement with faiss, ratios."""
    gallery, queries = _make_data(kind, rng, size, dim, cfg["queries"])
    searchers, auto, build_s = _searchers(gallery, cfg)
    del gallery  # each method holds its own copy now
    rows = []
    for batch in cfg["batches"]:
        batches = [queries[s:s + batch] for s in range(0, len(queries) - batch + 1, batch)]
        active = {name: search for name, search in searchers.items()  # the naive block must fit
                  if not (name == "torch_naive" and batch * size * 4 > NAIVE_MAX_BYTES)}
        times, agree, recall = _interleaved(active, batches, cfg)
        for name in active:
            stats = summarize(times[name], items_per_call=batch)
            rows.append({"data": kind, "dim": dim, "size": size, "batch": batch, "method": name,
                         "path": auto.search_path(batch) if name == "gallery" else None,
                         "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
                         "queries_per_s": batch / (stats["p50_ms"] / 1e3), "agree_faiss": agree.get(name),
                         "recall_at_k": recall.get(name), "build_s": build_s.get(name)})
    for ref, column in (("faiss", "vs_faiss"), ("gallery", "vs_gallery")):
        qps = {r["batch"]: r["queries_per_s"] for r in rows if r["method"] == ref}
        for row in rows:
            base = qps.get(row["batch"])
            row[column] = None if base is None else row["queries_per_s"] / base
    return rows


def _interleaved(searches: Searchers, batches: list[np.ndarray],
                 cfg: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Seconds per call of every method, one call each per round, so shared-CPU noise hits all alike;
    each method's share of ids equal to faiss's (same place) over the batches it was timed on, and its
    recall@k (share of faiss's k ids it returned, in any order: the approximate methods' figure)."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in searches}
    for search in searches.values():
        search(batches[0])  # warm-up, also builds lazily derived rows (not scored: batch 0 is timed below)
    times: dict[str, list[float]] = {name: [] for name in searches}
    for r in range(min(cfg["repeats"], max(len(batches), cfg["rounds"]))):
        batch = batches[r % len(batches)]
        for name, search in searches.items():
            result: list[np.ndarray] = []
            times[name] += time_calls(_call(search, batch, result), device=cfg["device"], warmup=0, repeats=1)
            if r < len(batches):
                outputs[name].append(result[0])
    agree, recall = {}, {}
    if "faiss" in outputs:
        ref = np.concatenate(outputs["faiss"])
        for name, out in outputs.items():
            got = np.concatenate(out)
            agree[name] = float(np.mean(got == ref))
            recall[name] = recall_at_k(got, ref)
    return times, agree, recall


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's reference ids (a row of ``truth``) found in its row of ``found``,
    in any order."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))


def _call(search: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
          out: list[np.ndarray]) -> Callable[[], None]:
    return lambda: out.append(search(batch))


def _plot(rows: list[dict[str, Any]], path: Path, cfg: dict[str, Any]) -> None:
    """One log-log panel per batch size (queries/s against gallery rows), for the first data kind and dim."""
    first = rows[0]
    note = " [SMOKE RUN]" if cfg["quick"] else ""
    if cfg["device"].startswith("cuda") and not any(r["method"] == "faiss" for r in rows):
        note += " [faiss-gpu absent: no faiss line]"
    panels: list[Panel] = []
    for batch in cfg["batches"]:
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["size"], r["queries_per_s"]) for r in rows if r["method"] == method and r["batch"] == batch
                   and r["data"] == first["data"] and r["dim"] == first["dim"]]
            if pts:
                series[method] = ([p[0] for p in pts], [p[1] for p in pts])
        panels.append((series, "gallery size (rows)", "queries / s",
                       f"batch {batch}, dim {first['dim']}, {cfg['device']}{note}"))
    plot_loglog_panels(path, panels)


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.gallery", __doc__)
    p.add_argument("--out", type=Path, default=Path("artifacts/bench"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny sizes, dim 64: a smoke run in seconds")
    p.add_argument("--sizes", type=cli.positive_int, nargs="+", help=f"gallery sizes (default {FULL['sizes']})")
    p.add_argument("--batches", type=cli.positive_int, nargs="+", help=f"query batch sizes (default {FULL['batches']})")
    p.add_argument("--dims", "--dim", type=cli.positive_int, nargs="+", dest="dims",
                   help=f"embedding dims (default {FULL['dims']})")
    p.add_argument("--queries", type=cli.positive_int, help=f"queries per measurement (default {FULL['queries']})")
    p.add_argument("--k", type=cli.positive_int, default=10, help="neighbours per query")
    p.add_argument("--repeats", type=cli.positive_int, default=20, help="most timed calls per point")
    p.add_argument("--rounds", type=cli.positive_int, default=5,
                   help="timed calls per point even when the queries make fewer batches")
    p.add_argument("--data", nargs="+", choices=["unit", "clustered"], default=["unit"],
                   help="random unit vectors and/or clustered unit vectors")
    p.add_argument("--paths", nargs="*", choices=EXACT, default=[],
                   help="also time the Gallery forced onto these paths (crossover measurement)")
    p.add_argument("--approx", nargs="*", choices=APPROXIMATE, default=[],
                   help="also time the approximate Gallery (faiss IVF, HNSW, IVF-SQ8): speed and recall@k vs faiss")
    p.add_argument("--no-naive", dest="naive", action="store_false", help="skip the torch matmul+topk baseline")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings (device resolved through engine.device), or InputError saying which flags
    disagree (got / expected / fix); each count is already positive (cli.positive_int)."""
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({key: getattr(args, key) for key in ("sizes", "batches", "dims", "queries")
                if getattr(args, key) is not None})
    cfg.update(k=args.k, repeats=args.repeats, rounds=args.rounds, device=str(torch_device(args.device)),
               seed=args.seed, dtype="float32", data=args.data, paths=args.paths, approx=args.approx,
               naive=args.naive, quick=args.quick)
    if cfg["k"] > min(cfg["sizes"]):
        raise InputError(f"--k {cfg['k']} exceeds the smallest gallery (--sizes {min(cfg['sizes'])}); pass "
                         "--k at most the smallest size")
    if max(cfg["batches"]) > cfg["queries"]:
        raise InputError(f"--batches {max(cfg['batches'])} exceeds --queries {cfg['queries']}; pass more "
                         "--queries or smaller --batches")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_cli(lambda: _run(args))  # the shared CLI tail (engine.cli)


def _run(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    cli.check_out_dir(args.out)  # before the run, not after it
    if cfg["quick"]:
        print(SMOKE)
    rng = np.random.default_rng(args.seed)
    rows = []
    for kind in cfg["data"]:
        for dim in cfg["dims"]:
            for size in cfg["sizes"]:
                new = _bench_cell(kind, dim, size, cfg, rng)
                print(markdown_table(new, COLUMNS), end="", flush=True)
                rows += new
    write_json(args.out / "gallery.json", {"environment": environment(cfg["device"]), "settings": cfg,
                                           "results": rows})
    title = f"# Gallery search, {cfg['device']}" + (f"\n\n**{SMOKE}**" if cfg["quick"] else "")
    write_text(args.out / "gallery.md", f"{title}\n\n" + markdown_table(rows, COLUMNS))
    _plot(rows, args.out / "gallery.png", cfg)
    print(f"wrote {args.out}/gallery.json, gallery.md, gallery.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

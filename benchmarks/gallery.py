"""Gallery search benchmark: engine.gallery.Gallery vs a plain torch matmul+topk vs faiss IndexFlatL2.

``python -m benchmarks.gallery --out artifacts/bench`` times exact k-NN over unit vectors (random, and
clustered like real embeddings with ``--data``) for each gallery size and query batch. Methods are
``gallery`` (coarse="auto": the bf16 two-pass search on CPU), ``gallery_plain`` (coarse="off": one
FP32 GEMM pass; left out where ``gallery`` already is that search, e.g. on CUDA, so the device holds no
second Gallery copy), ``torch_naive`` and ``faiss``; their calls are interleaved round-robin in one process
so that load from other users of the machine hits them alike, and medians are reported. ``fallback``
is the fraction of queries the two-pass search had to redo with an FP32 shortlist. It writes gallery.json (environment, settings, results), gallery.md (table) and gallery.png (queries/s
against gallery size, log-log). ``--quick`` runs tiny sizes in seconds (smoke test, not figures).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import environment, markdown_table, plot_loglog, summarize, time_calls, write_json
from engine import cli
from engine.atomic import write_text
from engine.gallery import Gallery
from engine.twopass import Counts

FULL = {"sizes": [1_000, 10_000, 100_000, 1_000_000], "dim": 1024, "queries": 1000, "batches": [1, 100, 1000]}
QUICK = {"sizes": [1_000, 4_000], "dim": 64, "queries": 64, "batches": [1, 32]}
NAIVE_MAX_BYTES = 2 << 30  # the un-chunked baseline is skipped where its (batch x gallery) block is bigger
COLUMNS = ["data", "size", "batch", "method", "p50_ms", "p99_ms", "queries_per_s", "memory_mb", "vs_faiss",
           "agree_faiss", "fallback"]
CLUSTER_SIZE = 20  # rows per cluster ("images of one person")
CLUSTER_SPREAD = 0.5  # noise norm relative to the (unit) centre, before re-normalising


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around shared centres: near neighbours are close, as with re-id embeddings."""
    x = centres[rng.integers(0, len(centres), n)] + CLUSTER_SPREAD * _unit(rng, n, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _make_data(kind: str, rng: np.random.Generator, size: int, cfg: dict[str, Any]) -> tuple[np.ndarray, ...]:
    if kind == "unit":
        return _unit(rng, size, cfg["dim"]), _unit(rng, cfg["queries"], cfg["dim"])
    centres = _unit(rng, max(1, size // CLUSTER_SIZE), cfg["dim"])
    return _clustered(rng, size, cfg["dim"], centres), _clustered(rng, cfg["queries"], cfg["dim"], centres)


def _searchers(gallery: np.ndarray, k: int, device: str) -> dict[str, tuple[Callable[[np.ndarray], Any], float]]:
    """name -> (search(queries) -> ids as numpy, resident memory in MB) for every method available."""
    import torch

    ours = Gallery(gallery.shape[1], device=device)
    ours.add(gallery, np.arange(len(gallery)))
    dev_gallery = torch.from_numpy(gallery).to(device)
    mb = gallery.nbytes / 2**20

    def naive(q: np.ndarray) -> np.ndarray:
        qt = torch.from_numpy(q).to(device)
        d = (qt * qt).sum(1, keepdim=True) - 2 * qt @ dev_gallery.T + (dev_gallery * dev_gallery).sum(1)
        return torch.topk(d, k, dim=1, largest=False).indices.cpu().numpy()

    coarse_mb = mb / 2 if ours.search_mode == "bf16" else 0.0  # the bf16 copy
    out = {"gallery": (lambda q: ours.search(q, k)[1], mb + coarse_mb), "_gallery": (ours, 0.0)}
    if ours.search_mode != "off":
        plain = Gallery(gallery.shape[1], device=device, coarse="off")
        plain.add(gallery, np.arange(len(gallery)))
        out["gallery_plain"] = (lambda q: plain.search(q, k)[1], mb)
    out["torch_naive"] = (naive, mb)
    try:
        import faiss
    except ImportError:
        return out
    index = faiss.IndexFlatL2(gallery.shape[1])
    if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
        out["_faiss_res"] = (faiss.StandardGpuResources(), 0.0)  # keep alive with the GPU index
        index = faiss.index_cpu_to_gpu(out["_faiss_res"][0], 0, index)
    index.add(gallery)
    out["faiss"] = (lambda q: index.search(q, k)[1], mb)
    return out


def _bench_size(size: int, kind: str, cfg: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    gallery, queries = _make_data(kind, rng, size, cfg)
    all_searchers = _searchers(gallery, cfg["k"], cfg["device"])
    ours = all_searchers["_gallery"][0]
    searchers = {n: s for n, s in all_searchers.items() if not n.startswith("_")}
    reference = searchers["faiss"][0](queries) if "faiss" in searchers else None
    rows = []
    for batch in cfg["batches"]:
        batches = [queries[s:s + batch] for s in range(0, len(queries), batch)]
        names = [n for n in searchers if not (n == "torch_naive" and batch * size * 4 > NAIVE_MAX_BYTES)]
        times = _interleaved({n: searchers[n][0] for n in names}, batches, cfg)
        ours.counts = Counts()  # the agreement pass below counts the fallbacks over all queries
        for name in names:
            search, mb = searchers[name]
            stats = summarize(times[name], items_per_call=batch)
            agree = None if reference is None else float(np.mean(search(queries) == reference))
            fallback = None if name != "gallery" else (ours.counts.fp32 + ours.counts.wide) / len(queries)
            rows.append({"data": kind, "size": size, "batch": batch, "method": name, "p50_ms": stats["p50_ms"],
                         "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
                         "queries_per_s": batch / (stats["p50_ms"] / 1e3), "memory_mb": mb,
                         "agree_faiss": agree, "fallback": fallback})
    _add_ratios(rows)
    return rows


def _interleaved(searches: dict[str, Callable[[np.ndarray], Any]], batches: list[np.ndarray],
                 cfg: dict[str, Any]) -> dict[str, list[float]]:
    """Seconds per call of every method, one call each per round, so shared-CPU noise hits all alike."""
    for search in searches.values():
        search(batches[0])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in searches}
    for r in range(min(cfg["repeats"], max(len(batches), cfg["rounds"]))):
        batch = batches[r % len(batches)]
        for name, search in searches.items():
            times[name] += time_calls(lambda s=search, b=batch: s(b), device=cfg["device"], warmup=0, repeats=1)
    return times


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    faiss_qps = {(r["data"], r["batch"]): r["queries_per_s"] for r in rows if r["method"] == "faiss"}
    for row in rows:
        base = faiss_qps.get((row["data"], row["batch"]))
        row["vs_faiss"] = None if base is None else row["queries_per_s"] / base


def _plot(rows: list[dict[str, Any]], path: Path, device: str) -> None:
    batch = max(r["batch"] for r in rows)
    series = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["size"], r["queries_per_s"]) for r in rows
               if r["method"] == method and r["batch"] == batch and r["data"] == rows[0]["data"]]
        if pts:
            series[method] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_loglog(path, series, xlabel="gallery size (rows)", ylabel="queries / s",
                title=f"exact k-NN, batch {batch}, {device}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gallery", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("artifacts/bench"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, dim 64: a smoke run in seconds")
    p.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (default 1e3..1e6)")
    p.add_argument("--batches", type=int, nargs="+", help="query batch sizes (default 1 100 1000)")
    p.add_argument("--dim", type=int, help="embedding dim (default 1024)")
    p.add_argument("--queries", type=int, help="queries per measurement (default 1000)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=20, help="most timed calls per point (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed calls per point even when the queries make fewer batches (default: %(default)s)")
    p.add_argument("--data", nargs="+", choices=["unit", "clustered"], default=["unit"],
                   help="random unit vectors and/or clustered unit vectors (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(lambda: _main(argv))  # the shared CLI tail (engine.cli)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({key: getattr(args, key) for key in ("sizes", "batches", "dim", "queries") if getattr(args, key)})
    cfg.update(k=args.k, repeats=args.repeats, rounds=args.rounds, device=args.device, seed=args.seed,
               dtype="float32", data=args.data)
    rng = np.random.default_rng(args.seed)
    rows = []
    for kind in args.data:
        for size in cfg["sizes"]:
            new = _bench_size(size, kind, cfg, rng)
            print(markdown_table(new, COLUMNS), end="", flush=True)
            rows += new
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gallery.json", {"environment": environment(args.device), "settings": cfg,
                                           "results": rows})
    write_text(args.out / "gallery.md", f"# Gallery search, {args.device}\n\n" + markdown_table(rows, COLUMNS))
    _plot(rows, args.out / "gallery.png", args.device)
    print(f"wrote {args.out}/gallery.json, gallery.md, gallery.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

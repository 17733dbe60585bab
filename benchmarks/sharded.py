"""Sharded gallery search on Ray vs one in-process Gallery: ``python -m benchmarks.sharded --out DIR``.

Random unit rows (``--rows`` x ``--dim``, FP32, ids 0..n-1) go into one in-process ``Gallery`` and
into a ``ShardedGallery`` of each ``--shards`` count on one local Ray cluster (``--cluster-cpus``
CPUs; each shard reserves none and runs ``--shard-threads`` torch threads, default: the cluster's
CPUs over the shard count). Query batches of each ``--batch`` size are timed (``--repeats`` calls
after a warm-up) on every configuration in turn, and every sharded answer is checked equal to the
in-process one (the same ids; distances within TOLERANCE: faiss rounds differently with another
thread count). Reported per configuration: queries/s, p50 latency, the ratio to in-process, and the
merge's own cost (engine.sharded.merge_topk on the shards' (Q, k) lists, timed
alone) per query. Writes sharded.json and sharded.md into ``--out``. Exit codes: 0 ok, 1 a sharded
answer differed, 2 usage or input errors.

On a machine with fewer cores than shards nothing runs in parallel: the figures then show the cost
of the scatter and the merge, not a speed-up.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import summarize, time_calls, write_equality_report
from engine import cli
from engine.gallery import Gallery
from engine.sharded import ShardedGallery, ShardOptions, merge_topk

# faiss's distances move by an ulp or two with its OpenMP thread count (1 in a shard, all cores in-process),
# measured here: 7e-7 at most on unit rows; the neighbours do not move.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
COLUMNS = ["mode", "shards", "batch", "queries_per_s", "p50_ms", "vs_in_process", "merge_us_per_query", "max_distance_diff", "equal"]


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def merge_cost(shards: int, batch: int, k: int, repeats: int) -> float:
    """Microseconds per query of merging ``shards`` sorted (batch, k) lists."""
    rng = np.random.default_rng(1)
    parts = [(np.sort(rng.random((batch, k), dtype=np.float32), axis=1), rng.integers(0, 1 << 40, (batch, k)))
             for _ in range(shards)]
    times = time_calls(lambda: merge_topk(parts, k), warmup=3, repeats=max(repeats, 20))
    return 1e6 * float(np.median(times)) / batch


def time_searches(mode: str, g: Any, queries: np.ndarray, wants: dict[int, Any],
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per batch size: the timed searches of ``g`` and its answer checked against ``wants``."""
    out = []
    for batch in args.batch:
        q = queries[:batch]
        got, want = g.search(q, args.k), wants[batch]
        stats = summarize(time_calls(lambda q=q: g.search(q, args.k), repeats=args.repeats), batch)
        shards = getattr(g, "shards", 0)
        out.append({"mode": mode, "shards": shards, "batch": batch, "rows": args.rows, "dim": args.dim, "k": args.k,
                    "queries_per_s": stats["items_per_s"], **stats, "threads_per_shard": getattr(g, "threads", None),
                    "merge_us_per_query": merge_cost(shards, batch, args.k, args.repeats) if shards else None,
                    "max_distance_diff": float(np.abs(got[0] - want[0]).max()),
                    "equal": bool(np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], **TOLERANCE))})
    return out


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """In-process first, then each shard count in turn (one sharded copy of the rows alive at a time)."""
    rows, queries = unit_rows(args.rows, args.dim, 0), unit_rows(max(args.batch), args.dim, 1)
    ids = np.arange(args.rows, dtype=np.int64)
    gallery = Gallery(args.dim)
    gallery.add(rows, ids)
    wants = {b: gallery.search(queries[:b], args.k) for b in args.batch}
    results = time_searches("in-process", gallery, queries, wants, args)
    del gallery
    for shards in args.shards:
        threads = args.shard_threads or max(1, args.cluster_cpus // shards)
        sharded = ShardedGallery.create(work / f"s{shards}.json", args.dim, shards,
                                        options=ShardOptions(cpus=0, threads=threads))
        sharded.add(rows, ids)
        results += time_searches(f"ray-{shards}", sharded, queries, wants, args)
        sharded.close()
        for path in work.glob(f"s{shards}.*"):
            path.unlink()
    base = {r["batch"]: r["queries_per_s"] for r in results if r["shards"] == 0}
    for row in results:
        row["vs_in_process"] = row["queries_per_s"] / base[row["batch"]]
    return sorted(results, key=lambda r: (r["batch"], r["shards"]))


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.sharded", __doc__)
    cli.add_out(p, None, help="folder for sharded.json and sharded.md")
    p.add_argument("--rows", type=cli.positive_int, default=100_000, help="gallery rows")
    p.add_argument("--dim", type=cli.positive_int, default=512, help="embedding dimension")
    p.add_argument("--shards", type=cli.positive_int, nargs="+", default=[1, 2, 4], help="shard counts")
    p.add_argument("--batch", type=cli.positive_int, nargs="+", default=[1, 32], help="queries per search")
    p.add_argument("--k", type=cli.positive_int, default=10, help="neighbours per query")
    p.add_argument("--repeats", type=cli.positive_int, default=20, help="timed searches per configuration")
    p.add_argument("--cluster-cpus", type=cli.positive_int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--shard-threads", type=cli.positive_int, help="torch threads per shard (default: "
                   "cluster CPUs / shards)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    import ray

    cli.check_out_dir(args.out)
    started = not ray.is_initialized()  # a caller's (a test's) session is used as it is
    if started:
        ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory(prefix="sharded-") as tmp:
            results = measure(args, Path(tmp))
    finally:
        if started:
            ray.shutdown()
    return write_equality_report(args.out, "sharded", args, results, COLUMNS, lambda cpu: (
        f"{args.rows} rows x {args.dim}, k={args.k}, {args.repeats} searches each, {cpu}, "
        f"{args.cluster_cpus}-CPU Ray cluster"))


if __name__ == "__main__":
    sys.exit(main())

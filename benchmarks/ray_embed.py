"""Gallery embedding on Ray vs in-process: ``python -m benchmarks.ray_embed --artifact DIR --out DIR``.

Generates ``--images`` PNG crops of the artefact's input size in a temporary folder (removed after),
then, in rounds with the order interleaved, times ``engine.embed.embed_paths`` with one in-process
Embedder and ``engine.ray_embed.embed_with_ray`` with 1, 2, ... Ray workers (one actor and one Embedder
each, ``--cpus-per-worker`` CPUs) on one local Ray cluster started once (``--cluster-cpus``). Both
decode the PNGs and embed; the Ray time includes starting the actors and opening their Embedders
(what a job pays), writing and merging the shards, not starting the cluster. Every Ray result is
checked equal to the in-process one. Reports the median images/s per mode, the ratio to in-process,
and the scaling from 1 to N workers. Writes ray_embed.json and ray_embed.md into ``--out``.
Exit codes: 0 ok, 1 a Ray result differed, 2 usage or input errors.
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import write_equality_report
from engine import Embedder, ModelSpec, cli
from engine.embed import embed_paths
from engine.errors import InputError
from engine.images import list_images
from engine.ray_embed import RayOptions, embed_with_ray

COLUMNS = ["mode", "workers", "images", "median_s", "images_per_s", "vs_in_process", "scaling_vs_1_worker",
           "equal"]


def make_folder(folder: Path, count: int, spec: ModelSpec) -> list[Path]:
    rng = np.random.default_rng(0)
    for n in range(count):
        pixels = rng.integers(0, 256, spec.image_shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{n // 4:05d}_c{n % 6 + 1}s1_{n:06d}_00.png")
    return list_images(folder)


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(args: argparse.Namespace, paths: list[Path], work: Path) -> list[dict[str, Any]]:
    import ray

    started = not ray.is_initialized()  # a caller's (a test's) session is used as it is
    if started:
        ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, logging_level=logging.ERROR)
    times: dict[str, list[float]] = {}
    equal: dict[str, bool] = {}
    try:
        for _ in range(args.rounds):
            with Embedder(args.artifact, backend=args.backend, device="cpu", precision=args.precision) as embedder:
                seconds, (want, _) = _timed(lambda e=embedder: embed_paths(paths, e, e.spec.image_shape,
                                                                           progress=False))
            times.setdefault("in-process", []).append(seconds)
            for workers in args.workers:
                opts = RayOptions(workers=workers, cpus_per_worker=args.cpus_per_worker, backend=args.backend,
                                  device="cpu", precision=args.precision, shard_size=args.shard_size)
                seconds, (got, _) = _timed(lambda o=opts: embed_with_ray(paths, args.artifact, work / "shards", o))
                times.setdefault(f"ray-{workers}", []).append(seconds)
                equal[f"ray-{workers}"] = equal.get(f"ray-{workers}", True) and np.array_equal(got, want)
    finally:
        if started:
            ray.shutdown()
    rows: list[dict[str, Any]] = []
    for mode, values in times.items():
        median = statistics.median(values)
        rows.append({"mode": mode, "workers": 0 if mode == "in-process" else int(mode.split("-")[1]),
                     "images": len(paths), "median_s": median, "images_per_s": len(paths) / median,
                     "seconds": values, "equal": equal.get(mode, True)})
    base = rows[0]["images_per_s"]
    one = next((r["images_per_s"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["vs_in_process"] = row["images_per_s"] / base
        row["scaling_vs_1_worker"] = row["images_per_s"] / one if one and row["workers"] else None
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.ray_embed", __doc__)
    cli.add_artifact(p)
    cli.add_out(p, None, help="folder for ray_embed.json and ray_embed.md")
    p.add_argument("--images", type=cli.positive_int, default=2000, help="generated crops")
    p.add_argument("--workers", type=cli.positive_int, nargs="+", default=[1, 2], help="Ray worker counts")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per worker")
    p.add_argument("--cluster-cpus", type=cli.positive_int, default=2, help="CPUs of the local cluster")
    p.add_argument("--shard-size", type=cli.positive_int, default=256, help="images per shard")
    p.add_argument("--rounds", type=cli.positive_int, default=3, help="timed rounds, order interleaved")
    p.add_argument("--backend", default="ort", help="engine backend")
    cli.add_precision(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_cli(lambda: _main(args))


def check_resources(args: argparse.Namespace) -> None:
    """InputError unless every worker count fits the local cluster: Ray would keep the workers that do
    not fit waiting for CPUs forever (and a worker of 0 CPUs is not a measurement of one)."""
    if not math.isfinite(args.cpus_per_worker) or args.cpus_per_worker <= 0:
        raise InputError(f"--cpus-per-worker {args.cpus_per_worker}: expected a number of CPUs above 0, e.g. 1")
    need = max(args.workers) * args.cpus_per_worker
    if need > args.cluster_cpus:
        raise InputError(f"--workers {max(args.workers)} x --cpus-per-worker {args.cpus_per_worker:g} need {need:g} "
                         f"CPUs, but --cluster-cpus is {args.cluster_cpus}: the workers that do not fit would wait "
                         "for CPUs forever; raise --cluster-cpus or lower --workers / --cpus-per-worker")


def _main(args: argparse.Namespace) -> int:
    check_resources(args)
    cli.check_out_dir(args.out)
    spec = ModelSpec.load(args.artifact)
    with tempfile.TemporaryDirectory(prefix="ray-embed-") as tmp:
        folder = Path(tmp) / "crops"
        folder.mkdir()
        rows = run(args, make_folder(folder, args.images, spec), Path(tmp))
    return write_equality_report(args.out, "ray_embed", args, rows, COLUMNS, lambda cpu: (
        f"{args.images} images {spec.height}x{spec.width}, median of {args.rounds} rounds, {cpu}"))


if __name__ == "__main__":
    sys.exit(main())

"""Embedding latency and throughput per backend: ``python -m benchmarks.latency ARTIFACT_DIR``.

Every backend (PyTorch FP32 eager, the baseline; PyTorch FP16 and ``torch.compile`` on CUDA; ONNX
Runtime FP32/FP16 graphs; TensorRT FP16 where a plan and TensorRT exist) runs in this one process on
the same random uint8 batches through ``engine.Embedder``: host pixels in, host unit vectors out, so
the clock covers the copies a caller pays for. Per batch size: warm-up calls (they also absorb
``torch.compile``'s compilation), then timed calls with the device synchronised before each clock
read; p50/p90/p99 latency, images/s, the ratio to PyTorch FP32 eager at that batch size, the lowest
cosine to the baseline's embeddings, host RSS and CUDA peak memory. A backend that cannot run here is
listed with the reason. Writes latency.json (environment, settings, results, skipped), latency.md and
latency.png into ``--out``. Exit codes: 0 ok, 2 usage or input errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.candidates import (
    BASELINE,
    CANDIDATES,
    Candidate,
    artifact_spec,
    backend_device,
    load_module,
    measure,
    open_embedder,
    pick,
    resolve_device,
)
from benchmarks.common import (
    host_memory_mb,
    markdown_table,
    plot_loglog_panels,
    summarize,
    time_calls,
)
from engine.atomic import write_text
from engine.parity import cosine_rows

FULL_BATCHES = [1, 8, 32, 128, 256]
QUICK_BATCHES = [1, 8]
COLUMNS = ["backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms", "images_per_s", "vs_torch_fp32",
           "min_cosine", "host_rss_mb", "device_peak_mb"]


def _versions() -> dict[str, str | None]:
    """Versions of the optional runtimes, recorded as found (None: not importable here)."""
    found: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime", "tensorrt", "pycuda"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # an installed but broken runtime (missing libnvinfer) counts as absent
            found[name] = None
    return found


def _reset_device_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _device_peak_mb(device: str) -> float | None:
    """PyTorch's CUDA allocator peak since the last reset (ONNX Runtime / TensorRT allocate outside it)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _bench_candidate(cand: Candidate, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (one per batch size this candidate runs) for one opened candidate."""
    device = backend_device(cand, ctx["device"])
    batches = ctx["batches"]
    if device == "cpu" and ctx["device"] != "cpu" and ctx["cpu_max_batch"]:
        batches = [b for b in batches if b <= ctx["cpu_max_batch"]]
    rows = []
    _reset_device_peak(ctx["device"])
    with open_embedder(cand, ctx["folder"], ctx["device"], ctx["module"]) as embed:
        for batch in batches:
            images = ctx["images"][:batch]
            times = time_calls(lambda e=embed, x=images: e(x), device=device, warmup=ctx["warmup"],
                               repeats=ctx["repeats"], min_seconds=ctx["min_seconds"])
            stats = summarize(times, items_per_call=batch)
            stats["images_per_s"] = stats.pop("items_per_s")
            out = embed(images)
            if cand.name == BASELINE:
                ctx["reference"][batch] = out
            reference = ctx["reference"].get(batch)
            rows.append({"backend": cand.name, "device": embed.device, "precision": cand.precision,
                         "compiled": cand.compile, "batch": batch, **stats,
                         "min_cosine": None if reference is None else float(cosine_rows(reference, out).min())})
            print(markdown_table(rows[-1:], COLUMNS[:7]).splitlines()[-1], flush=True)
    memory = {**host_memory_mb(), "device_peak_mb": _device_peak_mb(ctx["device"])}
    return [{**row, **memory} for row in rows]


def _plot(rows: list[dict[str, Any]], path: Path, device: str) -> None:
    def series(key: str) -> dict[str, tuple[list[float], list[float]]]:
        names = dict.fromkeys(r["backend"] for r in rows)
        return {n: ([r["batch"] for r in rows if r["backend"] == n], [r[key] for r in rows if r["backend"] == n])
                for n in names}

    plot_loglog_panels(path, [(series("images_per_s"), "batch size", "images / s", f"throughput, {device}"),
                              (series("p99_ms"), "batch size", "p99 latency (ms)", f"p99 latency, {device}")])


def _markdown(rows: list[dict[str, Any]], skipped: dict[str, str], settings: dict[str, Any],
              env: dict[str, Any]) -> str:
    head = (f"# Embedding latency, {env['device_name']} ({settings['device']})\n\n"
            f"Model {settings['model']}; torch {env['torch']}, onnxruntime {settings['versions']['onnxruntime']}; "
            f"{settings['repeats']}+ timed calls after {settings['warmup']} warm-up per point. "
            "vs_torch_fp32: images/s over PyTorch FP32 eager at the same batch size, same process. "
            "host_rss_mb: resident memory after the backend ran (process-wide).\n\n")
    tail = "".join(f"- {name} skipped: {why}\n" for name, why in skipped.items())
    return head + markdown_table(rows, COLUMNS) + ("\n" + tail if tail else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact_dir", type=Path, help="artefact folder from `python -m export.build_engine`")
    p.add_argument("--checkpoint", type=Path,
                   help="checkpoint the artefact was exported from (export does not record it); "
                        "the PyTorch baseline and every ratio need it")
    p.add_argument("--out", type=Path, default=Path("artifacts/bench"), help="output folder (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where torch/TensorRT run; ONNX Runtime uses CUDA only if its build has it (default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (ONNX Runtime keeps its own default)")
    p.add_argument("--quick", action="store_true", help="batches 1 and 8, 3 calls, no torch.compile: a smoke run")
    p.add_argument("--batches", type=int, nargs="+", help=f"batch sizes (default {FULL_BATCHES})")
    p.add_argument("--backends", nargs="+", default=list(CANDIDATES), metavar="NAME",
                   help=f"subset of {list(CANDIDATES)} (default: all; {BASELINE} always runs first)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include the torch.compile backends (default: yes, except with --quick)")
    p.add_argument("--cpu-max-batch", type=int,
                   help="with --device cuda, largest batch for backends that run on the CPU (ORT reference)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per point (default: %(default)s)")
    p.add_argument("--repeats", type=int, help="timed calls per point, at least (default 20; --quick 3)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="keep timing a point until this much time was measured (default 0.5; --quick 0)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _context(args: argparse.Namespace) -> tuple[list[Candidate], dict[str, Any], dict[str, Any]]:
    """Candidates, the run context (model, images, device) and the settings recorded in the JSON."""
    spec = artifact_spec(args)
    names = [n for n in args.backends if "compile" not in n or (args.compile if args.compile is not None
                                                                 else not args.quick)]
    candidates = pick([BASELINE, *names])
    batches = sorted(set(args.batches or (QUICK_BATCHES if args.quick else FULL_BATCHES)))
    device = resolve_device(args.device)
    settings = {"device": device, "batches": batches, "backends": [c.name for c in candidates],
                "warmup": args.warmup, "repeats": args.repeats or (3 if args.quick else 20),
                "min_seconds": args.min_seconds if args.min_seconds is not None else (0.0 if args.quick else 0.5),
                "cpu_max_batch": args.cpu_max_batch, "seed": args.seed, "input": "random uint8 NHWC",
                "model": f"{spec.height}x{spec.width} -> {spec.embedding_dim}-D",
                "artifact_dir": str(args.artifact_dir), "checkpoint": str(args.checkpoint),
                "versions": _versions()}
    images = np.random.default_rng(args.seed).integers(0, 256, (max(batches), *spec.image_shape), dtype=np.uint8)
    module = load_module(args.checkpoint) if args.checkpoint else None
    ctx = {"folder": args.artifact_dir, "device": device, "module": module, "images": images,
           "reference": {}, **{k: settings[k] for k in ("batches", "warmup", "repeats", "min_seconds",
                                                        "cpu_max_batch")}}
    return candidates, ctx, settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    measured = measure(args, _context, _bench_candidate, "images_per_s", "latency")
    if measured is None:
        return 2
    run, ctx = measured
    rows = run["results"]
    write_text(args.out / "latency.md", _markdown(rows, run["skipped"], run["settings"], run["environment"]))
    if rows:
        _plot(rows, args.out / "latency.png", ctx["device"])
    print(f"wrote {args.out}/latency.json, latency.md" + (", latency.png" if rows else ""))
    return 0

if __name__ == "__main__":
    sys.exit(main())

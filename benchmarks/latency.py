"""Embedding latency and throughput per backend: ``python -m benchmarks.latency --artifact DIR``.

Every backend (PyTorch FP32 eager, the baseline; PyTorch FP16 and ``torch.compile`` on CUDA; ONNX
Runtime FP32/FP16 graphs; TensorRT FP16 where a plan and TensorRT exist) runs in this one process on
the same random uint8 batches through ``engine.Embedder``: host pixels in, host unit vectors out, so
the clock covers the copies a caller pays for. Per batch size: warm-up calls (they also absorb
``torch.compile``'s compilation), then timed calls with the device synchronised before each clock
read; p50/p90/p99 latency, images/s, the ratio to PyTorch FP32 eager at that batch size, the lowest
cosine to the baseline's embeddings, host RSS and CUDA peak memory. With ``--rounds N`` (N > 1) every
backend is opened at once and each round times them in turn (interleaved), so load on a shared
machine hits all alike. A backend that cannot run here is listed with the reason. Writes
latency.json (environment, settings, results, skipped), latency.md and latency.png into ``--out``.
Exit codes: 0 ok, 2 usage or input errors, or nothing could be measured. From Python:
``run(artifact, checkpoint, LatencyOptions(...))`` returns the report without writing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.backends import (
    BASELINE,
    CANDIDATES,
    Candidate,
    backend_device,
    open_embedder,
    pick,
    resolve_device,
)
from benchmarks.common import (
    Panel,
    Series,
    host_memory_mb,
    markdown_table,
    plot_loglog_panels,
    summarize,
    time_calls,
)
from benchmarks.harness import Report
from engine import Embedder, cli
from engine.backends.ort import CUDA_OPTIONS
from engine.errors import InputError
from engine.parity import cosine_rows
from engine.spec import ModelSpec

FULL_BATCHES = (1, 8, 32, 128, 256)
QUICK_BATCHES = (1, 8)
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


def _batches(cand: Candidate, ctx: dict[str, Any]) -> list[int]:
    """The batch sizes ``cand`` runs (CPU-side backends of a CUDA run stop at --cpu-max-batch)."""
    device = backend_device(cand, ctx["device"])
    if device == "cpu" and ctx["device"] != "cpu" and ctx["cpu_max_batch"]:
        return [b for b in ctx["batches"] if b <= ctx["cpu_max_batch"]]
    return list(ctx["batches"])


def _time(cand: Candidate, embed: Embedder, batch: int, ctx: dict[str, Any], warmup: int) -> list[float]:
    images = ctx["images"][:batch]
    return time_calls(lambda: embed(images), device=backend_device(cand, ctx["device"]), warmup=warmup,
                      repeats=ctx["repeats"], min_seconds=ctx["min_seconds"])


def _row(cand: Candidate, embed: Embedder, batch: int, times: list[float], ctx: dict[str, Any]) -> dict[str, Any]:
    """One result row: latency percentiles, images/s and the lowest cosine to the baseline's embeddings."""
    stats = summarize(times, items_per_call=batch)
    stats["images_per_s"] = stats.pop("items_per_s")
    out = embed(ctx["images"][:batch])
    if cand.name == BASELINE:
        ctx["reference"][batch] = out
    reference = ctx["reference"].get(batch)
    row = {"backend": cand.name, "device": embed.device, "precision": cand.precision, "compiled": cand.compile,
           "batch": batch, **stats,
           "min_cosine": None if reference is None else float(cosine_rows(reference, out).min())}
    print(markdown_table([row], COLUMNS[:7]).splitlines()[-1], flush=True)
    return row


def _bench_candidate(cand: Candidate, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (one per batch size this candidate runs) for one opened candidate."""
    rows = []
    _reset_device_peak(ctx["device"])
    with open_embedder(cand, ctx["folder"], ctx["device"], ctx["module"]) as embed:
        for batch in _batches(cand, ctx):
            rows.append(_row(cand, embed, batch, _time(cand, embed, batch, ctx, ctx["warmup"]), ctx))
    memory = {**host_memory_mb(), "device_peak_mb": _device_peak_mb(ctx["device"])}
    return [{**row, **memory} for row in rows]


def _bench_interleaved(cands: list[Candidate], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Every candidate open at once; each of ``rounds`` rounds times each in turn at every batch size,
    so a load change on a shared machine hits them all alike. Rows pool the rounds' calls."""
    with ExitStack() as stack:
        opened = [(c, stack.enter_context(open_embedder(c, ctx["folder"], ctx["device"], ctx["module"])))
                  for c in cands]
        times: dict[tuple[str, int], list[float]] = {}
        for rnd in range(ctx["rounds"]):
            for cand, embed in opened:
                for batch in _batches(cand, ctx):
                    times.setdefault((cand.name, batch), []).extend(
                        _time(cand, embed, batch, ctx, ctx["warmup"] if rnd == 0 else 1))
        rows = [_row(cand, embed, batch, times[cand.name, batch], ctx)
                for cand, embed in opened for batch in _batches(cand, ctx)]
    memory = {**host_memory_mb(), "device_peak_mb": _device_peak_mb(ctx["device"])}
    return [{**row, **memory} for row in rows]


def plot_panels(rows: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[list[Panel], str]:
    """Throughput, p99 latency and the speed-up over PyTorch FP32 against batch size, one row of panels
    per device the backends ran on (a CUDA run's CPU-side backends get their own, titled cpu), and the
    figure's title (a --quick run is marked as one)."""
    panels: list[Panel] = []
    for device in dict.fromkeys(r["device"] for r in rows):
        on = [r for r in rows if r["device"] == device]

        def series(key: str, on: list[dict[str, Any]] = on) -> Series:
            names = dict.fromkeys(r["backend"] for r in on if r.get(key) is not None)
            return {n: ([r["batch"] for r in on if r["backend"] == n and r.get(key) is not None],
                        [r[key] for r in on if r["backend"] == n and r.get(key) is not None]) for n in names}

        panels += [(series("images_per_s"), "batch size", "images / s", f"throughput, {device}"),
                   (series("p99_ms"), "batch size", "p99 latency (ms)", f"p99 latency, {device}"),
                   (series("vs_torch_fp32"), "batch size", "x PyTorch FP32 eager (images/s ratio)",
                    f"speed-up over PyTorch FP32, {device}", 1.0)]
    title = f"Embedding {settings.get('model', '')} (run on {settings['device']})"
    if settings.get("quick"):
        title += " [--quick: a smoke run, few calls; not figures to quote]"
    return panels, title


def _plot(rows: list[dict[str, Any]], path: Path, settings: dict[str, Any]) -> None:
    panels, title = plot_panels(rows, settings)
    plot_loglog_panels(path, panels, columns=3, title=title)


def _markdown(report: Report) -> str:
    rows, skipped, settings, env = report.results, report.skipped, report.settings, report.environment
    head = (f"# Embedding latency, {env['device_name']} ({settings['device']})\n\n"
            f"Model {settings['model']}; torch {env['torch']}, onnxruntime {settings['versions']['onnxruntime']}; "
            f"{settings['repeats']}+ timed calls after {settings['warmup']} warm-up per point. "
            "vs_torch_fp32: images/s over PyTorch FP32 eager at the same batch size, same process. "
            "host_rss_mb: resident memory after the backend ran (process-wide).\n\n"
            + ("**A --quick smoke run: few calls per point; not figures to quote.**\n\n" if settings.get("quick") else ""))
    return head + markdown_table(rows, COLUMNS) + harness.skipped_notes(skipped)


@dataclass(frozen=True)
class LatencyOptions:
    """What ``run`` measures; the defaults are a full run (``QUICK`` is the smoke run)."""

    device: str = "auto"                  # auto, cpu, cuda[:N]: where torch and TensorRT run
    batches: tuple[int, ...] = FULL_BATCHES
    backends: tuple[str, ...] = tuple(CANDIDATES)  # the baseline is always added and run first
    warmup: int = 3                       # untimed calls per point
    repeats: int = 20                     # timed calls per point, at least
    min_seconds: float = 0.5              # and at least this much measured time per point
    cpu_max_batch: int | None = None      # with a CUDA device: largest batch for CPU-side backends
    seed: int = 0
    quick: bool = False                   # a smoke run (--quick): its report and plot say so
    rounds: int = 1                       # > 1: all backends open at once, timed in turn each round

    def __post_init__(self) -> None:
        harness.check_positive(batches=self.batches, repeats=self.repeats, cpu_max_batch=self.cpu_max_batch,
                               rounds=self.rounds)
        if self.warmup < 0 or self.min_seconds < 0:
            raise InputError(f"warmup={self.warmup}, min_seconds={self.min_seconds}: expected 0 or more")


QUICK = LatencyOptions(batches=QUICK_BATCHES, backends=tuple(n for n in CANDIDATES if "compile" not in n),
                       repeats=3, min_seconds=0.0, quick=True)


def run(artifact: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
        options: LatencyOptions = LatencyOptions()) -> Report:
    """Latency and throughput of every backend in ``options`` serving ``artifact`` (``checkpoint``:
    the PyTorch baseline and the ratios); raises a JLMLError when nothing could be measured."""
    spec = ModelSpec.load(artifact)
    candidates = pick([BASELINE, *options.backends])
    batches = sorted(set(options.batches))
    device = resolve_device(options.device)
    if options.cpu_max_batch is not None and device == "cpu":
        raise InputError(f"--cpu-max-batch {options.cpu_max_batch} limits the CPU-side backends of a CUDA run, and "
                         f"this run is on the CPU (--device {options.device}); drop it, or pass --device cuda")
    settings = {**dataclasses.asdict(options), "device": device, "batches": batches,
                "backends": [c.name for c in candidates], "input": "random uint8 NHWC",
                "model": f"{spec.height}x{spec.width} -> {spec.embedding_dim}-D",
                "artifact_dir": str(artifact), "checkpoint": str(checkpoint), "versions": _versions(),
                "ort_cuda_options": CUDA_OPTIONS}
    images = np.random.default_rng(options.seed).integers(0, 256, (max(batches), *spec.image_shape),
                                                          dtype=np.uint8)
    ctx = {"folder": Path(artifact), "device": device, "images": images, "probe": images[:1], "reference": {},
           "module": harness.load_module(checkpoint, spec, artifact) if checkpoint else None,
           **{k: settings[k] for k in ("batches", "warmup", "repeats", "min_seconds", "cpu_max_batch", "rounds")}}
    return harness.measure(candidates, ctx, _bench_candidate, "images_per_s", settings,
                           together=_bench_interleaved if options.rounds > 1 else None)


def write_outputs(report: Report, out: str | os.PathLike[str]) -> list[Path]:
    """latency.json, latency.md and (when rows exist) latency.png in ``out``."""
    paths = harness.write_report(report, out, "latency", _markdown(report))
    if report.results:
        paths.append(Path(out) / "latency.png")
        _plot(report.results, paths[-1], report.settings)
    return paths


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.latency", __doc__)
    cli.add_artifact(p)
    cli.add_checkpoint(p, "checkpoint the artefact was exported from (another one, told by the sha256 spec.json "
                          "records, exits 2); the PyTorch baseline and every ratio need it")
    cli.add_out(p, "artifacts/bench")
    cli.add_device(p, help="where torch/TensorRT run; ONNX Runtime uses CUDA only if its build has it")
    cli.add_threads(p)
    p.add_argument("--quick", action="store_true", help="batches 1 and 8, 3 calls, no torch.compile: a smoke run")
    p.add_argument("--batches", type=cli.positive_int, nargs="+", help=f"batch sizes (default {list(FULL_BATCHES)})")
    p.add_argument("--backends", nargs="+", default=list(CANDIDATES), metavar="NAME",
                   help=f"subset of {list(CANDIDATES)} (default: all; {BASELINE} always runs first)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include the torch.compile backends (default: yes, except with --quick)")
    p.add_argument("--cpu-max-batch", type=cli.positive_int,
                   help="with --device cuda, largest batch for backends that run on the CPU (ORT reference)")
    p.add_argument("--warmup", type=int, default=LatencyOptions.warmup, help="untimed calls per point")
    p.add_argument("--repeats", type=cli.positive_int, help="timed calls per point, at least (default 20; --quick 3)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="keep timing a point until this much time was measured (default 0.5; --quick 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    p.add_argument("--rounds", type=cli.positive_int, default=1,
                   help="> 1: open every backend at once and time them in turn, this many rounds (interleaved: "
                        "a load change on a shared machine hits all alike); default 1, one after another")
    return p


def _options(args: argparse.Namespace) -> LatencyOptions:
    base = QUICK if args.quick else LatencyOptions()
    compile_ = args.compile if args.compile is not None else not args.quick
    return dataclasses.replace(
        base, device=args.device, batches=tuple(args.batches or base.batches), warmup=args.warmup,
        backends=tuple(n for n in args.backends if compile_ or "compile" not in n), seed=args.seed,
        repeats=args.repeats or base.repeats, cpu_max_batch=args.cpu_max_batch, rounds=args.rounds,
        min_seconds=base.min_seconds if args.min_seconds is None else args.min_seconds)


def main(argv: list[str] | None = None) -> int:
    return harness.bench_main(argv, _parser(), _options, run, write_outputs)


if __name__ == "__main__":
    sys.exit(main())

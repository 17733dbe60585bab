"""Timing and reporting helpers shared by every benchmark (gallery search, model latency).

A benchmark times a callable with ``time_calls`` (warm-up, device synchronisation before each clock
read), summarises with ``summarize``, records where it ran with ``environment`` and writes JSON,
markdown and log-log plots with ``write_json``, ``markdown_table`` and ``plot_loglog_panels``. Outputs go
through engine.atomic so an interrupted run never leaves half a report.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import write_text, write_with
from engine.search import twopass


def synchronize(device: str) -> None:
    """Wait for queued GPU work on ``device`` (the measured ``cuda:N``, not the current device), so
    the clock measures the work and not the launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def time_calls(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 2, repeats: int = 10,
               min_seconds: float = 0.0) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls; at least ``repeats`` calls and, if
    ``min_seconds`` is set, keep going until that much time was measured (stabler percentiles)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float], items_per_call: int = 1) -> dict[str, float]:
    """p50/p90/p99/mean latency in milliseconds and items per second (from the mean)."""
    arr = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90, "p99_ms": 1e3 * p99, "mean_ms": 1e3 * arr.mean(),
            "items_per_s": items_per_call / arr.mean(), "calls": len(arr)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Versions, device name and CPU info: enough to tell whether two reports are comparable."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device,
        # cores this process may run on (taskset): fewer than cpu_count means a pinned run
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = env["cpu"]
    env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # AVX512, AVX2 (ATEN_CPU_CAPABILITY)
    env["native_bf16"] = twopass.bf16_is_fast()  # the plan's view (JLML_NATIVE_BF16 overrides)
    try:
        import faiss

        env["faiss"] = faiss.__version__
        config = getattr(faiss, "SIMDConfig", None)  # faiss >= 1.12 dispatches at run time (FAISS_SIMD_LEVEL)
        env["faiss_simd"] = config.get_level_name() if config is not None else None
    except ImportError:
        env["faiss"] = env["faiss_simd"] = None
    return env


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_equality_report(out: Path, name: str, args: Any, rows: list[dict[str, Any]], columns: Sequence[str],
                          title: Callable[[str], str]) -> int:
    """``out/NAME.json`` (environment, the CLI's settings, rows) and ``out/NAME.md`` (``title(cpu)`` and the
    table), printed; exit 0 when every row's answers were ``equal`` to the reference's, else 1."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"environment": environment("cpu"), "settings": settings, "results": rows}
    write_json(out / f"{name}.json", report)
    table = markdown_table(rows, columns)
    write_text(out / f"{name}.md", f"{title(report['environment']['cpu'])}:\n\n{table}")
    print(table, end="")
    print(f"wrote {out / f'{name}.json'}, {out / f'{name}.md'}")
    return 0 if all(r["equal"] for r in rows) else 1


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``; floats get 4 significant digits."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


Series = dict[str, tuple[Sequence[float], Sequence[float]]]
# (series, xlabel, ylabel, title) or, with a fifth item, a y value drawn as a dashed reference line
# (1.0 on a speed-up panel: above it is faster than the baseline).
Panel = tuple[Any, ...]
# Every plot gives a series of one name the same colour: backends, search methods, protocols.
SERIES_ORDER = ("torch-fp32", "torch-fp16", "torch-compile-fp32", "torch-compile-fp16", "ort-fp32", "ort-fp16",
                "ort-int8", "trt-fp16", "gallery", "faiss", "torch", "torch_naive", "http", "grpc")


def series_colour(name: str) -> str:
    """The colour of series ``name`` in every plot (a fixed slot for known names, a stable one by hash
    for others)."""
    import zlib

    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    slot = SERIES_ORDER.index(name) if name in SERIES_ORDER else len(SERIES_ORDER) + zlib.crc32(name.encode())
    return str(matplotlib.colors.to_hex(palette[slot % len(palette)]))


def loglog_figure(panels: Sequence[Panel], *, columns: int | None = None, title: str | None = None) -> Any:
    """A matplotlib figure of log-log panels, ``columns`` to a row (default: all in one row): measured x
    values and 1-2-5 y values as labelled ticks, one colour per series name, ``title`` above all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        _loglog_panel(ax, *panel)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _loglog_panel(ax: Any, series: Series, xlabel: str, ylabel: str, title: str, reference: float | None = None,
                  ) -> None:
    import matplotlib.ticker

    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name, color=series_colour(name))
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ticks = sorted({x for xs, _ in series.values() for x in xs})
    if ticks:  # the measured x values (batch sizes, gallery rows) as plain numbers, not powers of 10
        ax.set_xticks(ticks, [f"{x:,.0f}" for x in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend()


def plot_loglog_panels(path: str | os.PathLike[str], panels: Sequence[Panel], *, columns: int | None = None,
                       title: str | None = None) -> Path:
    """Save ``loglog_figure(panels, columns=, title=)`` as one PNG, so related views (throughput, tail
    latency, speed-up) share one file and one legend per panel."""
    import matplotlib.pyplot as plt

    fig = loglog_figure(panels, columns=columns, title=title)
    path = write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def host_memory_mb() -> dict[str, float | None]:
    """This process's resident host memory now and its high-water mark, in MiB.

    The peak is process-wide (the kernel keeps one per process), so in a run of several backends it
    is cumulative in run order; the current RSS after each backend is the per-backend figure.
    """
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
    try:
        with open("/proc/self/statm") as fh:
            rss_mb: float | None = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        rss_mb = None
    return {"host_rss_mb": rss_mb, "host_peak_rss_mb": peak_mb}

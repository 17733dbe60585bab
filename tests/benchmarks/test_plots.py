"""Benchmark plots a reader can read: labelled log ticks, one colour per series name everywhere, the
speed-up drawn, a --quick run marked, and no CPU line under a CUDA title."""
from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.common import loglog_figure, series_colour
from benchmarks.latency import plot_panels


def _row(backend: str, device: str, batch: int, rate: float, ratio: float | None) -> dict:
    return {"backend": backend, "device": device, "batch": batch, "images_per_s": rate, "p99_ms": 1e3 * batch / rate,
            "vs_torch_fp32": ratio}


ROWS = [_row(b, d, n, rate * n, ratio) for b, d, rate, ratio in
        (("torch-fp32", "cuda", 900.0, 1.0), ("trt-fp16", "cuda", 4000.0, 4.4), ("ort-fp32", "cpu", 90.0, 0.1))
        for n in (1, 8, 64)]


def test_a_cuda_run_keeps_cpu_backends_out_of_its_cuda_panels_and_plots_the_speed_up():
    panels, title = plot_panels(ROWS, {"device": "cuda", "model": "160x64 -> 1024-D", "quick": True})
    titles = [p[3] for p in panels]
    assert titles == ["throughput, cuda", "p99 latency, cuda", "speed-up over PyTorch FP32, cuda",
                      "throughput, cpu", "p99 latency, cpu", "speed-up over PyTorch FP32, cpu"]
    for series, *_, panel_title in (p[:4] for p in panels):
        device = panel_title.rsplit(", ", 1)[1]
        assert set(series) == {r["backend"] for r in ROWS if r["device"] == device}
        assert all(len(xs) == 3 for xs, _ in series.values())  # several batch sizes per line
    speedup = panels[2]
    assert speedup[0]["trt-fp16"][1] == [4.4, 4.4, 4.4] and speedup[4] == 1.0  # with its 1x reference line
    assert "--quick" in title and "not figures to quote" in title
    assert "--quick" not in plot_panels(ROWS, {"device": "cuda", "model": "m"})[1]


def test_log_axes_have_labelled_ticks_and_a_backend_keeps_its_colour():
    panels, title = plot_panels(ROWS, {"device": "cuda", "model": "m"})
    fig = loglog_figure(panels, columns=3, title=title)
    fig.canvas.draw()
    try:
        axes = [ax for ax in fig.axes if ax.lines]
        assert len(axes) == 6 and fig._suptitle.get_text() == title
        for ax in axes:
            low, high = ax.get_ylim()
            shown = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)
                     if t.get_text() and low <= v <= high]
            assert len(shown) >= 2, (ax.get_title(), shown)
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", "64"]
        colours = {(line.get_label(), line.get_color()) for ax in axes for line in ax.lines
                   if not line.get_label().startswith("_")}
        assert colours == {(name, series_colour(name)) for name in ("torch-fp32", "trt-fp16", "ort-fp32")}
        assert len({c for _, c in colours}) == 3
    finally:
        plt.close(fig)

"""What the hybrid matcher costs: ``python -m benchmarks.matcher --checkpoint FUSED_CKPT --out DIR``.

Exports three FP32 graphs of one fused checkpoint (``train.hybrid``): the fused embedding, its JLML part
alone and its descriptor + XQDA part alone (LOMO, or GOG + LOMO for gog_fused), and times them through the engine's ONNX Runtime backend on the
CPU, interleaved call by call in this one process on the same random uint8 batch (``--batch``, 64 by
default), so machine load hits all three alike. Then one profiled run of the fused graph attributes its
node time to GOG, LOMO's stages (colour histograms, SILTP, the rest), the XQDA projection and JLML, by the
module names the exporter gives the nodes. Writes matcher.json and matcher.md into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import environment, markdown_table, summarize, write_json
from engine.atomic import write_text
from engine.cli import HelpFormatter, positive_int, run_cli
from engine.errors import InputError

# Node-name markers of the exported fused graph -> the stage they belong to (first match wins); LOMO's
# nodes are split by operator into what its histograms are made of.
STAGES = (("/jlml/", "JLML"), ("/gog/", "GOG"), ("/lomo/", "LOMO"), ("MatMul", "XQDA projection"))
LOMO_OPS = {"Equal": "one-hot codes", "Cast": "one-hot codes", "MatMul": "cell histograms (matmul)",
            "AveragePool": "window sums and max", "ReduceMax": "window sums and max", "Round": "window sums and max"}


def _graphs(checkpoint: Path, folder: Path) -> dict[str, tuple[Path, Any]]:
    from export.onnx_export import onnx_from_checkpoint
    from train.checkpoint import load_checkpoint
    from train.hybrid import FUSED

    ckpt = load_checkpoint(checkpoint)
    if getattr(ckpt.model, "kind", "") not in FUSED:
        raise InputError(f"{checkpoint} serves {getattr(ckpt.model, 'kind', 'jlml')}, expected a fused matcher; "
                         "train one with --matcher fused or gog_fused (or a *_fused recipe)")
    metric = ckpt.model.metric_part.replace("_", "+")
    parts = {"fused": ckpt.model, "jlml alone": ckpt.network, f"{metric} alone": ckpt.model.metric_only()}
    return {name: (onnx_from_checkpoint(module.float().eval(), module.spec, folder / f"{i}.onnx"), module.spec)
            for i, (name, module) in enumerate(parts.items())}


def _stage(node: str, op: str) -> str:
    stage = next((stage for marker, stage in STAGES if marker in node), "other")
    return f"LOMO: {LOMO_OPS.get(op, 'the rest (codes, pooling, log, norms)')}" if stage == "LOMO" else stage


def profile(path: Path, images: np.ndarray, input_name: str, runs: int = 3) -> dict[str, float]:
    """Share of the node time per stage over ``runs`` profiled runs of the graph at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {input_name: images})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            stage = _stage(event["name"], event.get("args", {}).get("op_name", ""))
            totals[stage] = totals.get(stage, 0.0) + event["dur"]
    whole = sum(totals.values()) or 1.0
    return {stage: 100.0 * t / whole for stage, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def run(checkpoint: Path, batch: int = 64, repeats: int = 10) -> dict[str, Any]:
    from engine.backends.ort import OrtBackend

    with tempfile.TemporaryDirectory() as tmp:
        graphs = _graphs(checkpoint, Path(tmp))
        spec = next(iter(graphs.values()))[1]
        images = np.random.default_rng(0).integers(0, 256, (batch, *spec.image_shape), dtype=np.uint8)
        backends = {name: OrtBackend(path.parent, s, device="cpu", graph=path) for name, (path, s) in graphs.items()}
        times: dict[str, list[float]] = {name: [] for name in backends}
        try:
            for backend in backends.values():
                backend(images)  # warm-up
            for _ in range(repeats):
                for name, backend in backends.items():
                    tic = time.perf_counter()
                    backend(images)
                    times[name].append(time.perf_counter() - tic)
        finally:
            for backend in backends.values():
                backend.close()
        shares = profile(graphs["fused"][0], images, spec.input_name)
    rows = [{"graph": name, **summarize(t, batch), "dim": graphs[name][1].embedding_dim} for name, t in times.items()]
    jlml = next(r for r in rows if r["graph"] == "jlml alone")["items_per_s"]
    for row in rows:
        row["vs_jlml"] = row["items_per_s"] / jlml
    return {"environment": environment("cpu"), "load_avg": os.getloadavg(), "batch": batch,
            "repeats": repeats, "checkpoint": str(checkpoint), "results": rows, "fused_time_share_pct": shares}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    head = (f"ONNX Runtime CPU, FP32 graphs, batch {report['batch']}, {report['repeats']} interleaved calls each, "
            f"{env['cpu']} ({env['cpu_count']} cores), load average {report['load_avg'][0]:.2f}\n\n")
    table = markdown_table(report["results"], ["graph", "dim", "items_per_s", "p50_ms", "p90_ms", "vs_jlml"])
    shares = markdown_table([{"stage": k, "percent": v} for k, v in report["fused_time_share_pct"].items()],
                            ["stage", "percent"])
    return head + table + "\nWhere the fused graph's node time goes (ONNX Runtime profile):\n\n" + shares


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.matcher", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a fused checkpoint (--matcher fused)")
    p.add_argument("--out", type=Path, required=True, help="folder for matcher.json and matcher.md")
    p.add_argument("--batch", type=positive_int, default=64, help="images per call")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls per graph")
    args = p.parse_args(argv)

    def body() -> int:
        report = run(args.checkpoint, args.batch, args.repeats)
        write_json(args.out / "matcher.json", report)
        text = markdown(report)
        write_text(args.out / "matcher.md", text)
        print(text + f"\nwritten: {args.out / 'matcher.json'}, {args.out / 'matcher.md'}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.demo --out artifacts/demo``: THE demo, what ``make demo`` runs.

Renders the synthetic re-id set, evaluates the untrained JLML model, trains it, exports it (ONNX
FP32/FP16, parity, Triton repository, TensorRT plan where TensorRT exists), embeds the query and
gallery images through the exported engine, searches the engine's Gallery, and prints Rank-1/mAP
from the engine beside PyTorch's, then a short speed summary (engine vs PyTorch images/s, Gallery vs
faiss). It lives here, in the top layer, because it uses train/, export/ and engine/ together; its
first stages (data, untrained, train, report) are ``train.demo``'s, which alone is a training-only
smoke run. Writes ``OUT/train`` (checkpoint), ``OUT/artifact`` (the export), ``OUT/bench`` (speed)
and ``OUT/demo.json`` (every table row and stage time).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import Embedder, ParityError, cli
from engine.gallery import Gallery
from engine.metrics import evaluate
from engine.spec import PLAN_FILE
from train import demo as train_demo
from train.demo import DEMO_OPTIONS, DemoState, Stage

if TYPE_CHECKING:
    from export.build_engine import BuildResult

ENGINE_ROW = "trained (engine: {backend} {precision})"


def export_artifact(checkpoint: Path, out: Path) -> BuildResult:
    """Export ``checkpoint`` into the artefact folder ``out`` with the exporter's library call.

    Raises ParityError when an artefact misses its parity threshold (nothing is published then).
    """
    from export.build_engine import BuildOptions, build

    built = build(checkpoint, out, BuildOptions())
    skipped = f"; no {PLAN_FILE}: {built.plan_skipped}" if built.plan_skipped else ""
    print(f"exported {', '.join(built.files)} to {built.out}{skipped}")
    return built


def stage_export(state: DemoState) -> DemoState:
    """Checkpoint -> artefact folder ``OUT/artifact``."""
    assert state.checkpoint is not None  # stage_train ran: a programming error otherwise
    artifact = state.out / "artifact"
    state.extra["parity"] = export_artifact(state.checkpoint, artifact).parity
    state.extra["artifact"] = artifact
    return state


def _engine_rank1(gallery: Gallery, query: np.ndarray, data: Any) -> float:
    """Rank-1 straight from the Gallery's top-1 (junk -1 rows never reach a single-shot demo set)."""
    _, top = gallery.search(query, 1)
    return float(np.mean(data.gallery_pids[top[:, 0]] == data.query_pids))


def stage_engine(state: DemoState) -> DemoState:
    """Embed through the exported artefact (auto backend), search the Gallery, score it."""
    data = state.data
    with Embedder(state.extra["artifact"], backend="auto") as embedder:
        query, gallery_emb = embedder(data.query_images), embedder(data.gallery_images)
        name = ENGINE_ROW.format(backend=embedder.backend_name, precision=embedder.precision)
    gallery = Gallery(gallery_emb.shape[1])
    gallery.add(gallery_emb, ids=np.arange(len(gallery_emb)), cams=data.gallery_cams)
    metrics = evaluate(query, data.query_pids, data.query_cams, gallery_emb, data.gallery_pids,
                       data.gallery_cams, protocol=data.protocol)
    searched = _engine_rank1(gallery, query, data)
    if abs(searched - metrics["rank1"]) > 1e-9:
        raise ParityError(f"Gallery top-1 gives Rank-1 {searched:.4f}, evaluate gives {metrics['rank1']:.4f}")
    state.results[name] = metrics
    return state


def stage_speed(state: DemoState) -> DemoState:
    """A short speed summary: the engine against PyTorch FP32, the Gallery against faiss."""
    from benchmarks import summary

    assert state.checkpoint is not None
    state.extra["speed"] = summary.run(state.extra["artifact"], state.checkpoint, state.out / "bench")
    return state


STAGES: list[Stage] = [train_demo.stage_data, train_demo.stage_untrained, train_demo.stage_train, stage_export,
          stage_engine, stage_speed, train_demo.stage_report]


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("python -m benchmarks.demo", __doc__)
    cli.add_out(p, "artifacts/demo", help="demo folder (train/, artifact/, bench/, demo.json)")
    p.add_argument("--epochs", type=cli.positive_int, default=DEMO_OPTIONS.epochs, help="training epochs")
    cli.add_threads(p)
    cli.add_no_progress(p)
    args = p.parse_args(argv)

    def body() -> None:
        out = cli.check_out_dir(args.out)
        cli.set_threads(args.threads)
        opts = dataclasses.replace(DEMO_OPTIONS, epochs=args.epochs, progress=not args.no_progress)
        train_demo.run_demo(DemoState(out=out, opts=opts), STAGES)
        print(f"wrote {out}/demo.json, {out}/train, {out}/artifact, {out}/bench")

    return cli.run_cli(body, hint=f"partial outputs in {args.out}")


if __name__ == "__main__":
    sys.exit(main())

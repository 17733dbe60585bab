"""``python -m benchmarks.demo --out artifacts/demo`` (what ``make demo`` runs): the whole project.

Renders the synthetic re-id set, evaluates the untrained JLML model, trains it, exports it with
``python -m export.build_engine`` (ONNX FP32/FP16, parity, Triton repository, TensorRT plan where
TensorRT exists), embeds the query and gallery images through the exported engine, searches the
engine's Gallery, and prints Rank-1/mAP from the engine beside PyTorch's, then a short speed summary
(engine vs PyTorch images/s, Gallery vs faiss). It lives here, in the top layer, because it uses
train/, export/ and engine/ together; its training stages are ``train.demo``'s.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from engine import Embedder, ParityError
from engine.gallery import Gallery
from engine.metrics import evaluate
from engine.spec import PARITY_FILE
from train import demo as train_demo
from train.demo import DemoState

ENGINE_ROW = "trained (engine: {backend} {precision})"


def stage_export(state: DemoState) -> DemoState:
    """Checkpoint -> artefact folder, through the same CLI a user runs."""
    from export import build_engine

    artifact = state.out / "artifact"
    code = build_engine.main([str(state.checkpoint), "--out", str(artifact)])
    if code != 0:
        raise ParityError(f"export.build_engine exited {code}; see the lines above")
    parity = json.loads((artifact / PARITY_FILE).read_text())
    state.extra["artifact"] = artifact
    state.extra["parity"] = parity
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

    state.extra["speed"] = summary.run(state.extra["artifact"], state.checkpoint, state.out / "bench")
    return state


STAGES = [train_demo.stage_data, train_demo.stage_untrained, train_demo.stage_train, stage_export,
          stage_engine, stage_speed, train_demo.stage_report]


def main(argv: list[str] | None = None) -> int:
    return train_demo.main(argv, stages=STAGES, prog="python -m benchmarks.demo", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""The training half of the project demo, as library stages; ``python -m benchmarks.demo`` is the demo.

``make demo`` runs ``python -m benchmarks.demo``, which lives in the top layer because it also
exports, serves and benchmarks. It composes the stages here (render the synthetic set, evaluate the
untrained model, train, report) with its own export, engine and speed stages. Stages are functions over a small ``DemoState``: each reads what it needs from the
state (``checkpoint``, ``data``, ``out``) and adds its rows to ``state.results``. This module has no
command line of its own.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_text

from .checkpoint import CHECKPOINT_FILE
from .config import JLMLConfig
from .fusion import fit_and_save
from .lomo import LOMOConfig
from .loop import TrainOptions, evaluate_model, fit
from .model import JLML
from .runner import DataChoice, augment_factory

# 14 epochs of this train in ~70 s on 2 idle CPU cores (~4.5 s/epoch) and separate 100 synthetic people.
DEMO_CONFIG = JLMLConfig(widths=(16, 32, 64, 128), feat_dim=256, dropout=0.2)
DEMO_OPTIONS = TrainOptions(epochs=14, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=5e-4)
DEMO_DATA = {"num_ids": 250, "num_test": 100, "images_per_cam": 2}


@dataclass
class DemoState:
    """What stages hand on: the run folder, data set, config, checkpoint, result rows, timings."""

    out: Path
    cfg: JLMLConfig = DEMO_CONFIG
    opts: TrainOptions = DEMO_OPTIONS
    data_options: dict[str, int] = field(default_factory=lambda: dict(DEMO_DATA))  # synthetic set size
    matcher: str = "fused"                             # what the demo serves (train.hybrid.MATCHERS)
    data: Any = None                                   # train.data.ReidSet once stage_data ran
    checkpoint: Path | None = None                     # the trained checkpoint (last.pt)
    results: dict[str, dict[str, float]] = field(default_factory=dict)   # table row name -> metrics
    timings: dict[str, float] = field(default_factory=dict)              # stage name -> seconds
    extra: dict[str, Any] = field(default_factory=dict)                  # anything a later stage adds


Stage = Callable[[DemoState], DemoState]


def _data_choice(state: DemoState) -> DataChoice:
    return DataChoice("synthetic", options=state.data_options)


def stage_data(state: DemoState) -> DemoState:
    state.data = _data_choice(state).load(state.cfg)
    print(state.data.describe())
    return state


def stage_untrained(state: DemoState) -> DemoState:
    torch.manual_seed(state.opts.seed)
    state.results["untrained (PyTorch)"] = evaluate_model(JLML(state.cfg, state.data.num_classes), state.data)
    return state


def stage_train(state: DemoState) -> DemoState:
    """Train into ``OUT/train`` (a demo run starts afresh: it overwrites the last demo's checkpoint).

    With ``state.matcher`` "fused" (the default) JLML trains on two thirds of the training people and
    LOMO + XQDA joins it at the weight the other third chooses (``train.fusion``); the JLML part is
    scored on its own, and so is the LOMO + XQDA part. The demo shows the whole pipeline this way: JLML
    trained, LOMO + XQDA fitted, their weight chosen on held-out training people, one exported graph."""
    folder, record = state.out / "train", {"data": _data_choice(state).record()}

    def train_jlml(train_set: Any) -> JLML:
        return fit(state.cfg, train_set, state.opts, folder, make_augment=augment_factory(True), overwrite=True,
                   record=record).model

    if state.matcher == "jlml":
        model, network = train_jlml(state.data), None
    else:
        model, report = fit_and_save(state.matcher, state.data, state.cfg, LOMOConfig(), train_jlml, folder,
                                     seed=state.opts.seed, extra=record)
        network = report.network
        print(f"{state.matcher}: XQDA {report.xqda_dims} dims, metric share {report.share} (chosen on "
              f"{report.held_out_ids} held-out training people)")
    state.checkpoint = folder / CHECKPOINT_FILE
    state.results["trained (PyTorch)"] = evaluate_model(model, state.data)
    if network is not None:
        state.results["its JLML part alone (PyTorch)"] = evaluate_model(network, state.data)
        state.results["its LOMO + XQDA part alone (PyTorch)"] = evaluate_model(model.metric_only(), state.data)
    return state


def stage_report(state: DemoState) -> DemoState:
    from engine.metrics import format_table

    print(format_table(state.results), end="")
    print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in state.timings.items()))
    write_text(state.out / "demo.json", json.dumps(
        {"results": state.results, "timings_s": state.timings, "checkpoint": str(state.checkpoint),
         "config": state.cfg.to_dict()}, indent=2) + "\n")
    return state


STAGES: list[Stage] = [stage_data, stage_untrained, stage_train, stage_report]


def run_demo(state: DemoState, stages: list[Stage] | None = None) -> DemoState:
    """Run ``stages`` (default ``STAGES``) in order, timing each."""
    for stage in stages or STAGES:
        name = stage.__name__.removeprefix("stage_")
        print(f"== {name}", flush=True)
        tic = time.perf_counter()
        state = stage(state)
        state.timings[name] = time.perf_counter() - tic
    return state


if __name__ == "__main__":
    print("train.demo holds the demo's training stages; the demo is python -m benchmarks.demo (make demo)",
          file=sys.stderr)
    sys.exit(2)

"""``python -m train``: train JLML on a re-id data set, then evaluate it and save the metrics.

Writes ``OUT/last.pt`` (self-describing checkpoint, every epoch), ``OUT/log.jsonl`` (one line per
epoch) and ``OUT/metrics.json`` (Rank-k / mAP on the query/gallery split). Exit codes: 0 done,
2 bad arguments, data, or checkpoint (the message says what to change), 130 interrupted (resume it
with ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_text
from engine.cli import run_cli

from .config import BRANCHES, LOSSES, JLMLConfig
from .loop import CHECKPOINT_FILE, DEFAULT_LR, METRICS_FILE, TrainOptions, evaluate_model, fit

# CLI flag -> JLMLConfig field, for the architecture overrides (defaults come from JLMLConfig).
_CONFIG_FLAGS = {"height": int, "width": int, "stripes": int, "feat_dim": int, "dropout": float,
                 "lambda_global": float, "lambda_local": float, "label_smoothing": float}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,64,128, got {text!r}") from exc


def parse_key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. num_ids=40), got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS

    d, o = JLMLConfig(), TrainOptions()
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic", help="data set (default: synthetic)")
    g.add_argument("--data-root", help="folder holding the data set (default: $JLML_DATA or ../shared/data)")
    g.add_argument("--split-seed", type=int, default=0, help="which random train/test split of people")
    g.add_argument("--data-option", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, repeatable (synthetic: num_ids=, num_test=, images_per_cam=)")
    g.add_argument("--no-augment", action="store_true", help="train on the raw images (no flip/shift/erase)")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=o.epochs)
    t.add_argument("--batch-size", type=int, default=o.batch_size)
    t.add_argument("--lr", type=float, help=f"learning rate (default: {DEFAULT_LR})")
    t.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default=o.optimizer)
    t.add_argument("--schedule", choices=("cosine", "step"), default=o.schedule)
    t.add_argument("--weight-decay", type=float, default=o.weight_decay)
    t.add_argument("--seed", type=int, default=o.seed)
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--out", type=Path, default=Path("runs/jlml"), help="run folder (default: runs/jlml)")
    t.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help=f"continue a run from PATH (default: OUT/{CHECKPOINT_FILE}) with the same flags")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    m = p.add_argument_group("model (defaults: train.config.JLMLConfig)")
    m.add_argument("--branches", choices=BRANCHES, default=d.branches)
    m.add_argument("--loss", choices=LOSSES, default=d.loss)
    m.add_argument("--no-sparsity", action="store_true", help="drop the L2,1 / L1,2 sparsity terms")
    m.add_argument("--no-shared", action="store_true", help="each branch gets its own low-level layers")
    m.add_argument("--widths", type=_ints, default=d.widths, help=f"channels per stage (default {d.widths})")
    m.add_argument("--blocks", type=_ints, default=d.blocks, help=f"blocks per stage (default {d.blocks})")
    for name, kind in _CONFIG_FLAGS.items():
        m.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))
    return p


def config_from_args(args: argparse.Namespace) -> tuple[JLMLConfig, TrainOptions]:
    cfg = JLMLConfig(branches=args.branches, loss=args.loss, sparsity=not args.no_sparsity,
                     shared_layers=not args.no_shared, widths=args.widths, blocks=args.blocks,
                     **{name: getattr(args, name) for name in _CONFIG_FLAGS})
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                        schedule=args.schedule, weight_decay=args.weight_decay, seed=args.seed,
                        progress=not args.no_progress)
    return cfg, opts


def run(args: argparse.Namespace) -> dict[str, float]:
    """Load the data, train (or resume), evaluate; print and save the metrics."""
    from engine.metrics import format_table

    from .data import Augment, load_reid_set

    cfg, opts = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_reid_set(args.dataset, args.data_root, height=cfg.height, width=cfg.width,
                         split_seed=args.split_seed, **dict(args.data_option))
    print(data.describe())
    resume = None if args.resume is None else Path(args.resume or args.out / CHECKPOINT_FILE)
    result = fit(cfg, data, opts, args.out, resume=resume,
                 make_augment=None if args.no_augment else (lambda seed: Augment(seed=seed)))
    metrics = evaluate_model(result.model, data)
    print(format_table({f"{args.dataset} ({cfg.branches}, {cfg.loss})": metrics}), end="")
    write_text(args.out / METRICS_FILE, json.dumps(
        {"dataset": args.dataset, "split_seed": args.split_seed, "config": cfg.to_dict(), "metrics": metrics},
        indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args), interrupted=f"interrupted; continue with --resume (checkpoint in {args.out})")


if __name__ == "__main__":
    sys.exit(main())

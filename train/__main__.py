"""``python -m train``: train JLML on a re-id data set, then evaluate it and save the metrics.

Writes OUT/last.pt (self-describing checkpoint, every epoch, with the data set and split it was
trained on), OUT/log.jsonl (one line per epoch) and OUT/metrics.json (Rank-k / mAP on the test
people). An OUT that already holds a checkpoint is refused unless --resume (continue it, also to more
--epochs, with the same model, optimisation and data flags: any change of data set, split seed, loader
option or data root is refused, listing the fields) or --force (overwrite it). OUT is locked while a
run trains into it (OUT/.lock): a second run into it exits 2 naming the first one's pid; a lock left by a
killed run is taken over, and said so. --recipe NAME takes every setting from a recipe of
train/recipes.py (python -m train --recipe NAME --help shows them as the defaults); flags given
explicitly override it. --init CKPT fine-tunes from a checkpoint of the same network.

  python -m train --dataset viper --recipe viper --out runs/viper
  python -m train --dataset market1501 --data-root DIR --recipe few_hundred_ids --out runs/mine
  python -m train --device cuda --amp --recipe viper --epochs 120 --out runs/viper_gpu

The second line is the recipe for a new data set of a few hundred people in the Market-1501 layout
(bounding_box_train/, query/, bounding_box_test/). Exit codes: 0 done, 2 bad arguments, data,
output folder or checkpoint (the message says what to change), 130 interrupted (Ctrl-C), 143
terminated (SIGTERM); continue either with --resume.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.cli import (
    add_no_progress,
    add_threads,
    non_negative_int,
    parser,
    positive_int,
    run_cli,
    set_threads,
)

from . import distributed
from .cli import ints, parse_key_value
from .config import BRANCHES, LOSSES, JLMLConfig
from .hybrid import MATCHERS
from .lomo import LOMOConfig
from .loop import CHECKPOINT_FILE, DEFAULT_LR, SCHEDULES, Runtime, TrainOptions
from .recipes import RECIPES, Recipe
from .runner import DataChoice, Pretrain, run

__all__ = ["build_parser", "main", "parse_args", "parse_key_value"]

# CLI flag -> JLMLConfig field, for the architecture overrides (defaults come from JLMLConfig).
_CONFIG_FLAGS = {"height": int, "width": int, "stripes": int, "feat_dim": int, "dropout": float,
                 "lambda_global": float, "lambda_local": float, "label_smoothing": float,
                 "triplet_weight": float, "triplet_margin": float}


def _add_data(p: argparse.ArgumentParser, recipe: Recipe | None) -> None:
    from .data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=recipe.dataset if recipe else "synthetic",
                   help="data set")
    g.add_argument("--data-root", help="folder holding the data set (default: $JLML_DATA or ../shared/data)")
    g.add_argument("--split-seed", type=int, default=0, help="which random train/test split of people")
    g.add_argument("--data-option", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, repeatable (synthetic: num_ids=, num_test=, images_per_cam=; "
                        "viper/prid2011: num_train=, num_test=); a recipe's own apply to its data set only")
    g.add_argument("--no-augment", action="store_true", default=bool(recipe and not recipe.augment),
                   help="train on the raw images (no flip/shift/erase)")


def _add_optimisation(p: argparse.ArgumentParser, o: TrainOptions) -> None:
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=positive_int, default=o.epochs, help="epochs (with --resume: may be more "
                   "than the run had, the schedule stretches)")
    t.add_argument("--batch-size", type=positive_int, default=o.batch_size,
                   help="images per step (under torchrun: the global batch, split over the processes)")
    per_optimiser = ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items())
    t.add_argument("--lr", type=float, default=o.lr, help="base learning rate"
                   + (f" (default: per optimiser, {per_optimiser})" if o.lr is None else ""))
    t.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default=o.optimizer, help="optimiser")
    t.add_argument("--schedule", choices=SCHEDULES, default=o.schedule,
                   help="cosine decay to 0, or step (x0.1 at 2/3 of the epochs)")
    t.add_argument("--weight-decay", type=float, default=o.weight_decay, help="weight decay")
    t.add_argument("--seed", type=int, default=o.seed, help="weight initialisation and batch order seed")


def _add_run(p: argparse.ArgumentParser, recipe: Recipe | None) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--recipe", choices=sorted(RECIPES), help="start from this recipe's settings (default: none)")
    r.add_argument("--out", type=Path, help="run folder (default: a fresh runs/DATASET-YYYYmmdd-HHMMSS)")
    r.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue the run in --out (or from PATH) with the same flags (default: a fresh run)")
    r.add_argument("--force", action="store_true", help=f"overwrite the {CHECKPOINT_FILE} already in --out")
    r.add_argument("--init", type=Path, metavar="CKPT",
                   help="fine-tune from this checkpoint, its classifiers dropped if the id count differs "
                        "(default: fresh weights)")
    r.add_argument("--no-pretrain", action="store_true", help="skip the recipe's pre-training data set")
    r.add_argument("--matcher", choices=MATCHERS, default=recipe.matcher if recipe else "jlml",
                   help="what the checkpoint serves: jlml; lomo_xqda (LOMO + XQDA, trains nothing); gog_xqda "
                        "(GOG and LOMO + XQDA, trains nothing, the most accurate on small sets); fused / "
                        "gog_fused (JLML and the metric part in one embedding, the weight chosen on a held-out "
                        "third of the training people, on whom JLML then does not train)")
    r.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one), cpu, cuda or cuda:N")
    r.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, else fp16 + GradScaler)")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on for CUDA)")
    r.add_argument("--workers", type=non_negative_int, help="data loader processes (default: 4 on CUDA, 0 on CPU)")
    add_threads(r)
    add_no_progress(r)


def _add_model(p: argparse.ArgumentParser, d: JLMLConfig) -> None:
    m = p.add_argument_group("model (defaults: train.config.JLMLConfig, or the recipe's)")
    m.add_argument("--branches", choices=BRANCHES, default=d.branches, help="ablation: which branches")
    m.add_argument("--loss", choices=LOSSES, default=d.loss, help="one loss per branch, or one on the concat")
    m.add_argument("--no-sparsity", action="store_true", default=not d.sparsity,
                   help="drop the L2,1 / L1,2 sparsity terms")
    m.add_argument("--no-shared", action="store_true", default=not d.shared_layers,
                   help="each branch gets its own low-level layers")
    m.add_argument("--widths", type=ints, default=d.widths, help="channels per stage")
    m.add_argument("--blocks", type=ints, default=d.blocks, help="residual blocks per stage")
    for name, kind in _CONFIG_FLAGS.items():
        m.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name),
                       help=name.replace("_", " "))
    m.add_argument("--bnneck", action=argparse.BooleanOptionalAction, default=d.bnneck,
                   help="BatchNorm1d after each branch feature, feeding the classifier and the embedding "
                        "(default: %(default)s)")
    m.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=d.flip_test,
                   help="embedding = mean of the image's and its mirror's features, inside the graph "
                        "(default: %(default)s)")


def build_parser(recipe: Recipe | None = None) -> argparse.ArgumentParser:
    """The parser, its defaults those of ``recipe`` where it sets them."""
    p = parser("python -m train", __doc__)
    _add_data(p, recipe)
    _add_optimisation(p, TrainOptions(**recipe.options) if recipe else TrainOptions())
    _add_run(p, recipe)
    _add_model(p, JLMLConfig(**recipe.config) if recipe else JLMLConfig())
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read ``--recipe`` first, so its settings become the defaults that explicit flags override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    name = pre.parse_known_args(argv)[0].recipe
    return build_parser(RECIPES.get(name) if name else None).parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[JLMLConfig, TrainOptions]:
    recipe = RECIPES.get(args.recipe) if args.recipe else None
    cfg = JLMLConfig(**{**(recipe.config if recipe else {}), "branches": args.branches, "loss": args.loss,
                        "sparsity": not args.no_sparsity, "shared_layers": not args.no_shared,
                        "widths": args.widths, "blocks": args.blocks, "bnneck": args.bnneck,
                        "flip_test": args.flip_test,
                        **{name: getattr(args, name) for name in _CONFIG_FLAGS}})
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                        schedule=args.schedule, weight_decay=args.weight_decay, seed=args.seed,
                        progress=not args.no_progress)
    return cfg, opts


def data_from_args(args: argparse.Namespace) -> tuple[DataChoice, Pretrain | None]:
    """The data set (a recipe's loader options apply to its own data set only) and the recipe's
    pre-training set, unless --init or --no-pretrain replaces it."""
    recipe = RECIPES.get(args.recipe) if args.recipe else None
    own = dict(recipe.data_options) if recipe and recipe.dataset == args.dataset else {}
    data = DataChoice(args.dataset, args.split_seed, {**own, **dict(args.data_option)}, args.data_root)
    if recipe is None or recipe.pretrain is None or args.init is not None or args.no_pretrain:
        return data, None
    return data, Pretrain(DataChoice(recipe.pretrain, options=recipe.pretrain_options, root=args.data_root),
                          recipe.pretrain_epochs)


def joined_sets(args: argparse.Namespace) -> tuple[DataChoice, ...]:
    """The recipe's ``train_also`` data sets (every person of them joins the training ids)."""
    recipe = RECIPES.get(args.recipe) if args.recipe else None
    return tuple(DataChoice(name, options=options, root=args.data_root)
                 for name, options in (recipe.train_also.items() if recipe else ()))


def _train(args: argparse.Namespace) -> int:
    from engine.metrics import format_table

    cfg, opts = config_from_args(args)
    recipe = RECIPES.get(args.recipe) if args.recipe else None
    runtime = Runtime(device=args.device, amp=args.amp, channels_last=args.channels_last, workers=args.workers)
    data, pretrain = data_from_args(args)
    train_also = joined_sets(args)
    set_threads(args.threads)
    main_rank = distributed.is_main()  # under torchrun only rank 0 evaluates and prints
    result = run(cfg, opts, data, args.out, runtime=runtime, augment=not args.no_augment,
                 resume=args.resume, init=args.init, pretrain=pretrain, force=args.force,
                 evaluate=main_rank, log=print if main_rank else (lambda _: None), train_also=train_also,
                 matcher=args.matcher, lomo=LOMOConfig(**recipe.lomo) if recipe else None,
                 mirror_metric=bool(recipe and recipe.mirror_metric))
    distributed.barrier()  # rank 0 evaluates; the others wait, so no rank tears the group down under it
    if not main_rank:
        return 0
    print(format_table({f"{args.dataset} ({cfg.branches}, {cfg.loss})": result.metrics or {}}), end="")
    print(f"run folder: {args.out} ({CHECKPOINT_FILE}, log.jsonl, metrics.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is None:
        if distributed.launched():
            print("error: under torchrun every process must write to one folder; pass --out", file=sys.stderr)
            return 2
        if args.resume is not None:
            print("error: --resume continues the run in --out; pass --out of that run", file=sys.stderr)
            return 2
        args.out = Path("runs") / f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        return run_cli(lambda: _train(args), hint=f"continue with --resume --out {args.out} (same flags)")
    finally:
        distributed.destroy()


if __name__ == "__main__":
    sys.exit(main())

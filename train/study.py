"""``python -m train.study``: one recipe over several seeded splits (and the ablations), resumable.

Each run (variant x split seed) trains in ``OUT/<variant>/split<seed>/`` and ends with a
``metrics.json`` there; a run whose ``metrics.json`` exists is skipped, and an interrupted run
continues from its ``last.pt``, so re-running the same command after a crash or Ctrl-C finishes the
study without redoing work. After the runs, ``OUT/summary.json`` and ``OUT/summary.md`` hold the mean
and sample standard deviation over splits of every metric, per variant, and each variant's paired
difference to ``joint`` on the same splits. A recipe with pre-training trains each variant once on the
other data set in ``OUT/pretrain/<variant>/`` and starts every split from it. Exit codes: 0 done, 2 bad
arguments, data, or a finished run made with another recipe (use a fresh --out), 130 interrupted
(143 on SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import write_text
from engine.cli import HelpFormatter, positive_int, run_cli
from engine.errors import CheckpointError
from engine.progress import progress as progress_bar

from .config import JLMLConfig
from .fusion import fit_and_save
from .lomo import LOMOConfig
from .loop import CHECKPOINT_FILE, METRICS_FILE, embed_split, fit, score_embeddings
from .recipes import ABLATIONS, JOINT, RECIPES, Recipe, get_recipe
from .runner import DataChoice, augment_factory, join_training

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")


@dataclass(frozen=True)
class RunKey:
    """One run of a study: an ablation variant trained and evaluated on one split seed."""

    variant: str
    split_seed: int

    def folder(self, out: Path) -> Path:
        return out / self.variant / f"split{self.split_seed}"


def plan_runs(splits: int, variants: Sequence[str] = (JOINT,), first: int = 0) -> list[RunKey]:
    """Every (variant, split) pair of split seeds first..splits-1, split by split so a cut-short study
    still compares variants."""
    return [RunKey(v, seed) for seed in range(first, splits) for v in variants]


def _expected(recipe: Recipe, key: RunKey) -> dict[str, Any]:
    cfg, opts = recipe.build(key.variant, key.split_seed)
    options = opts.settings()
    record = {"recipe": recipe.name, "dataset": recipe.dataset, "variant": key.variant,
              "split_seed": key.split_seed, "config": cfg.to_dict(), "options": options,
              "augment": recipe.augment, "data_options": recipe.data_options}
    if recipe.pretrain:
        record["pretrain"] = {"dataset": recipe.pretrain, "epochs": recipe.pretrain_epochs,
                              "options": recipe.pretrain_options}
        if recipe.pretrain_also:
            record["pretrain"]["also"] = recipe.pretrain_also
    if recipe.train_also:
        record["train_also"] = recipe.train_also
    if recipe.augment_options:
        record["augment_options"] = recipe.augment_options
    if recipe.matcher != "jlml":
        record["matcher"], record["lomo"] = recipe.matcher, LOMOConfig(**recipe.lomo).to_dict()
        if recipe.mirror_metric:
            record["mirror_metric"] = True
    return record


def finished_record(recipe: Recipe, key: RunKey, out: Path) -> dict[str, Any] | None:
    """The saved record of a finished run, None if it has not finished.

    A record made under other settings raises CheckpointError: mixing it into the aggregate would
    report numbers of a recipe that is no longer the one named. A config field added since the record
    was written counts as its default (the value the run trained with).
    """
    path = key.folder(out) / METRICS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    saved = {**record, "config": JLMLConfig.from_dict(record["config"]).to_dict()} if "config" in record else record
    expected = _expected(recipe, key)
    diffs = sorted(k for k, v in expected.items() if saved.get(k) != json.loads(json.dumps(v)))
    if diffs:
        raise CheckpointError(f"{path} was made with other settings (differs in {diffs}) than recipe "
                              f"{recipe.name!r} now asks; use a fresh --out or delete that run folder")
    return record


def _fit(recipe: Recipe, cfg: Any, opts: Any, data: Any, folder: Path, init: Any = None,
         record: dict[str, Any] | None = None) -> Any:
    """``fit`` with the recipe's augmentation, continuing ``folder/last.pt`` when there is one."""
    resume = folder / CHECKPOINT_FILE
    return fit(cfg, data, opts, folder, resume=resume if resume.is_file() else None, init=init,
               make_augment=augment_factory(recipe.augment, recipe.augment_options), record=record)


def pretrained_weights(recipe: Recipe, variant: str, out: Path, data_root: str | None = None,
                       progress: bool = True) -> Any:
    """State dict of ``variant`` pre-trained on ``recipe.pretrain`` (trained once, in
    ``OUT/pretrain/<variant>/``, resumable like any run); None when the recipe has no pre-training."""
    if recipe.pretrain is None:
        return None
    from .data.combine import combine_train_sets

    cfg, opts = recipe.build_pretrain(variant)
    sources = {recipe.pretrain: recipe.pretrain_options, **recipe.pretrain_also}
    data = combine_train_sets([DataChoice(name, options=options, root=data_root).load(cfg, progress=progress)
                               for name, options in sources.items()])
    return _fit(recipe, cfg, opts, data, out / "pretrain" / variant,
                record={"pretrain": sources}).model.state_dict()


def train_and_evaluate(recipe: Recipe, key: RunKey, data: Any, out: Path, init: Any = None,
                       ) -> dict[str, Any]:
    """Train one run (from ``init`` weights, or continuing its ``last.pt``), evaluate it, save its record."""
    cfg, opts = recipe.build(key.variant, key.split_seed)
    tic, cpu = time.perf_counter(), time.process_time()
    trained_on = {"data": DataChoice(recipe.dataset, key.split_seed, recipe.data_options).record()}
    history: list[dict[str, Any]] = []

    def train_jlml(train_set: Any) -> Any:
        result = _fit(recipe, cfg, opts, train_set, key.folder(out), init, trained_on)
        history.extend(result.history)
        return result.model

    extra_record: dict[str, Any] = {}
    if recipe.matcher == "jlml":
        metrics, extra = run_metrics(recipe, train_jlml(data), data)
    else:
        matcher, report = fit_and_save(recipe.matcher, data, cfg, LOMOConfig(**recipe.lomo), train_jlml,
                                       key.folder(out), seed=key.split_seed, extra=trained_on,
                                       mirror=recipe.mirror_metric)
        metrics, extra = matcher_metrics(matcher, data, report.network)
        extra_record["fusion"] = report.to_dict()
    record = {**_expected(recipe, key), "metrics": metrics, **({"extra_metrics": extra} if extra else {}),
              **extra_record, "train_s": sum(h["time_s"] for h in history),
              "wall_s": time.perf_counter() - tic, "cpu_s": time.process_time() - cpu,
              "final_train_acc": history[-1]["acc"] if history else None}
    write_text(key.folder(out) / METRICS_FILE, json.dumps(record, indent=2) + "\n")
    return record


def matcher_metrics(matcher: Any, data: Any, network: Any = None,
                    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A hybrid matcher's test metrics, and those of each part alone (same weights: paired): the JLML
    ``network`` the run trained (served or not) and the descriptor + XQDA part ("lomo_xqda_part" or
    "gog_xqda_part")."""
    metrics = score_embeddings(*embed_split(matcher, data), data)
    if network is None:
        return metrics, {}
    return metrics, {"jlml_part": score_embeddings(*embed_split(network, data), data),
                     f"{matcher.metric_part}_part": score_embeddings(*embed_split(matcher.metric_only(), data), data)}


def run_metrics(recipe: Recipe, model: Any, data: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The run's test metrics and those of ``recipe.extra_metrics`` (re-ranked, on the same embeddings;
    without flip averaging, embedded again)."""
    query, gallery = embed_split(model, data)
    metrics, extra = score_embeddings(query, gallery, data), {}
    if "rerank" in recipe.extra_metrics:
        extra["rerank"] = score_embeddings(query, gallery, data, rerank=True)
    if "no_flip" in recipe.extra_metrics and model.cfg.flip_test:
        cfg, model.cfg = model.cfg, model.cfg.replace(flip_test=False)
        try:
            extra["no_flip"] = score_embeddings(*embed_split(model, data), data)
        finally:
            model.cfg = cfg
    return metrics, extra


def extra_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's extra metrics as records of variant ``<variant>+<name>`` (for aggregate/paired)."""
    return [{**r, "variant": f"{r['variant']}+{name}", "metrics": m}
            for r in records for name, m in r.get("extra_metrics", {}).items()]


def option_differences(records: list[dict[str, Any]], extras: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired difference of each ``<variant>+<name>`` extra to ``<variant>`` itself (same weights)."""
    out: dict[str, dict[str, Any]] = {}
    for base in sorted({r["variant"] for r in records}):
        mine = [r for r in extras if r["variant"].startswith(base + "+")]
        if mine:
            out.update(paired_differences([r for r in records if r["variant"] == base] + mine, baseline=base))
    return out


def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: ``{metric: {"mean", "std"}}`` over its runs, plus ``n`` and ``splits``.

    ``std`` is the sample standard deviation (ddof=1), the spread one more split would show; it is
    None for a single run, where no spread can be estimated.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["variant"], []).append(record)
    summary: dict[str, dict[str, Any]] = {}
    for variant, runs in grouped.items():
        row: dict[str, Any] = {"n": len(runs), "splits": sorted(r["split_seed"] for r in runs),
                               "train_s": float(np.mean([r["train_s"] for r in runs]))}
        for metric in METRIC_KEYS:
            values = np.array([r["metrics"][metric] for r in runs], dtype=np.float64)
            row[metric] = {"mean": float(values.mean()),
                           "std": float(values.std(ddof=1)) if len(values) > 1 else None}
        summary[variant] = row
    return summary


def paired_differences(records: Iterable[dict[str, Any]], baseline: str = JOINT,
                       ) -> dict[str, dict[str, Any]]:
    """Per variant: ``{metric: {"mean", "std"}}`` of (variant - baseline) over the splits both ran.

    Splits differ far more in difficulty than variants do, so comparing each variant with the
    baseline on the same split removes that shared part of the noise; an interval of mean ± 2 std/sqrt(n)
    that contains 0 means the study cannot tell the two apart.
    """
    by_split: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        by_split.setdefault(record["variant"], {})[record["split_seed"]] = record["metrics"]
    base = by_split.get(baseline, {})
    paired: dict[str, dict[str, Any]] = {}
    for variant, runs in by_split.items():
        seeds = sorted(set(runs) & set(base))
        if variant == baseline or not seeds:
            continue
        row: dict[str, Any] = {"n": len(seeds), "splits": seeds}
        for metric in METRIC_KEYS:
            d = np.array([runs[s][metric] - base[s][metric] for s in seeds], dtype=np.float64)
            row[metric] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else None}
        paired[variant] = row
    return paired


def summary_table(summary: dict[str, dict[str, Any]], signed: bool = False) -> str:
    """Markdown table, metrics in percent as ``mean ± std`` (std omitted for a single run);
    ``signed`` prints the sign of every mean (for differences)."""
    def cell(stat: dict[str, Any]) -> str:
        mean = f"{100 * stat['mean']:{'+' if signed else ''}.1f}"
        return mean if stat["std"] is None else f"{mean} ± {100 * stat['std']:.1f}"

    names = {"rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "rank20": "Rank-20", "mAP": "mAP"}
    timed = all("train_s" in row for row in summary.values())
    lines = ["| variant | " + " | ".join(names[m] for m in METRIC_KEYS) + " | splits |"
             + (" train s/run |" if timed else ""), "|---" * (len(METRIC_KEYS) + 2 + timed) + "|"]
    for variant, row in summary.items():
        cells = [cell(row[m]) for m in METRIC_KEYS] + [str(row["n"])]
        cells += [f"{row['train_s']:.0f}"] if timed else []
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_study(recipe: Recipe, keys: Sequence[RunKey], out: Path, data_root: str | None = None,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run every unfinished key (loading each split once), then write and return the aggregate."""
    from .data import load_reid_set

    records: list[dict[str, Any]] = []
    loaded: dict[int, Any] = {}
    weights: dict[str, Any] = {}
    joined: list[Any] | None = None  # recipe.train_also's sets, loaded once
    for key in progress_bar(keys, desc=f"study {recipe.name}", unit="run", disable=not progress):
        record = finished_record(recipe, key, out)
        if record is None:
            if key.split_seed not in loaded:
                cfg, _ = recipe.build(key.variant, key.split_seed)
                if joined is None:
                    joined = [DataChoice(name, options=options, root=data_root).load(cfg, progress=progress)
                              for name, options in recipe.train_also.items()]
                split = load_reid_set(recipe.dataset, data_root, height=cfg.height, width=cfg.width,
                                      split_seed=key.split_seed, progress=progress, **recipe.data_options)
                loaded = {key.split_seed: join_training(split, joined)}
            if key.variant not in weights:
                weights[key.variant] = pretrained_weights(recipe, key.variant, out, data_root, progress)
            record = train_and_evaluate(recipe, key, loaded[key.split_seed], out, weights[key.variant])
        records.append(record)
    extras = extra_records(records)
    summary, paired = aggregate(records + extras), paired_differences(records)
    levers = option_differences(records, extras)
    write_text(out / SUMMARY_JSON, json.dumps({"recipe": recipe.to_dict(), "variants": summary,
                                               "minus_joint": paired, "minus_same_weights": levers},
                                              indent=2) + "\n")
    text = f"Recipe `{recipe.name}` on {recipe.dataset}\n\n" + summary_table(summary)
    if paired:
        text += f"\nPaired difference to `{JOINT}` on the same splits (points)\n\n" + summary_table(paired, signed=True)
    if levers:
        text += "\nPaired difference to the same run without the evaluation option (points)\n\n" + \
            summary_table(levers, signed=True)
    write_text(out / SUMMARY_MD, text)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.study", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="see train/recipes.py")
    p.add_argument("--splits", type=int, default=3, help="split seeds 0..N-1")
    p.add_argument("--first-split", type=int, default=0,
                   help="first split seed to run; lets two processes share a study's splits, "
                        "the summary then covers the runs of this command only")
    p.add_argument("--ablations", action="store_true",
                   help=f"also run every ablation variant: {', '.join(v for v in ABLATIONS if v != JOINT)}")
    p.add_argument("--variants", nargs="+", choices=list(ABLATIONS), metavar="VARIANT",
                   help="run exactly these variants (overrides --ablations)")
    p.add_argument("--data-root", help="folder holding the data set (None: $JLML_DATA or ../shared/data)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--out", type=Path, required=True, help="study folder, e.g. runs/study_viper")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.splits < 1 or not 0 <= args.first_split < args.splits:
        print(f"error: --splits {args.splits} --first-split {args.first_split}; need 0 <= first split < "
              "splits", file=sys.stderr)
        return 2
    variants = args.variants or (list(ABLATIONS) if args.ablations else [JOINT])

    def body() -> int:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        summary = run_study(get_recipe(args.recipe), plan_runs(args.splits, variants, args.first_split), args.out,
                            args.data_root, progress=not args.no_progress)
        print(summary_table(summary), end="")
        print(f"study folder: {args.out} ({SUMMARY_MD}, {SUMMARY_JSON}, one folder per variant and split)")
        return 0

    return run_cli(body, hint=f"rerun the same command to continue (runs in {args.out})")


if __name__ == "__main__":
    sys.exit(main())

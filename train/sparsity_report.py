"""``python -m train.sparsity_report``: how sparse the trained JLML feature layers actually are.

The paper's structured-sparsity terms are meant to switch off whole global channels (group LASSO on
the columns of the global feature layer) and to keep every stripe in use while its weights compete
(exclusive LASSO across the stripes of the local feature layer). Whether a lambda did that is a
property of the weights, not of the accuracy, so this reads each finished run's ``last.pt`` of a study
(``STUDY/<variant>/split<seed>/``) and reports, per variant and averaged over its splits:

- ``global_small_<t>``: the fraction of global feature-layer columns (one per pooled channel) whose L2
  norm is below ``t`` times the largest column norm; near 0 means no channel was switched off;
- ``local_small_<t>``: the same fraction for the local feature layer's columns;
- ``<branch>_max_norm``: the largest column norm; a relative fraction cannot see a layer whose columns
  all shrank together (a branch switched off as a whole), this absolute scale does;
- ``stripe_share``: each stripe's share of the local layer's L1 mass (1/stripes each when balanced).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine import cli
from engine.atomic import write_text
from engine.errors import InputError

THRESHOLDS = (1e-3, 1e-2, 1e-1)


def _small_fraction(column_norms: np.ndarray, threshold: float) -> float:
    """Fraction of columns whose norm is below ``threshold`` times the largest one."""
    return float(np.mean(column_norms < threshold * column_norms.max()))


def weight_sparsity(weights: dict[str, np.ndarray], stripes: int,
                    thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
    """Sparsity of the feature layers ``{branch: weight (feat_dim, in_features)}`` of one model.

    Branches a model lacks (an ablation) are left out of the result rather than reported as zero.
    """
    out: dict[str, Any] = {}
    for branch, weight in weights.items():
        w = np.abs(np.asarray(weight, dtype=np.float64))
        norms = np.sqrt((w ** 2).sum(axis=0))
        out[f"{branch}_max_norm"] = float(norms.max())
        for t in thresholds:
            out[f"{branch}_small_{t:g}"] = _small_fraction(norms, t)
        if branch == "local":
            rows, cols = w.shape
            if stripes < 1 or cols % stripes:
                raise InputError(f"cannot split {cols} local input columns into {stripes} stripes; "
                                 "pass the model's number of stripes")
            mass = w.reshape(rows, stripes, cols // stripes).sum(axis=(0, 2))
            out["stripe_share"] = (mass / mass.sum()).tolist()
    return out


def checkpoint_sparsity(path: Path, thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
    """``weight_sparsity`` of the model saved in checkpoint ``path``."""
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    weights = {b: w.detach().cpu().numpy() for b, w in ck.trained_network().feature_weights().items()}
    return weight_sparsity(weights, ck.config.stripes, thresholds)


def average(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every entry over runs (element-wise for ``stripe_share``), with ``n`` runs."""
    if not rows:
        raise InputError("no runs to average; check the study folder and the variant names")
    return {"n": len(rows), **{k: np.mean([r[k] for r in rows], axis=0).tolist() for k in rows[0]}}


def study_sparsity(study: Path, variants: list[str], thresholds: tuple[float, ...] = THRESHOLDS,
                   ) -> dict[str, dict[str, Any]]:
    """Per variant: the split average of ``checkpoint_sparsity`` over the finished runs' ``last.pt``."""
    from .loop import CHECKPOINT_FILE, METRICS_FILE

    result: dict[str, dict[str, Any]] = {}
    for variant in variants:
        # Only finished runs (with a metrics.json): a run still training has a partial last.pt.
        paths = [m.parent / CHECKPOINT_FILE for m in sorted((study / variant).glob(f"split*/{METRICS_FILE}"))]
        if not paths:
            raise InputError(f"no finished run in {study / variant}/split*/ ({METRICS_FILE} + {CHECKPOINT_FILE}); "
                             "expected a study folder written by python -m train.study with that variant")
        result[variant] = {**average([checkpoint_sparsity(p, thresholds) for p in paths]),
                           "splits": [p.parent.name for p in paths]}
    return result


def sparsity_table(result: dict[str, dict[str, Any]], thresholds: tuple[float, ...] = THRESHOLDS) -> str:
    """Markdown table: max column norms as they are, column fractions and stripe shares in percent."""
    keys = [f"{b}_max_norm" for b in ("global", "local")]
    keys += [f"{b}_small_{t:g}" for b in ("global", "local") for t in thresholds]
    head = ["global max col norm", "local max col norm"]
    head += [f"{b} cols < {t:g} max (%)" for b in ("global", "local") for t in thresholds]
    lines = ["| variant | runs | " + " | ".join(head) + " | stripe L1 shares |", "|---" * (len(head) + 3) + "|"]
    for variant, row in result.items():
        cells = [("–" if k not in row else f"{row[k]:.3g}" if k.endswith("max_norm") else f"{100 * row[k]:.1f}")
                 for k in keys]
        shares = " / ".join(f"{100 * s:.1f}" for s in row.get("stripe_share", []))
        lines.append(f"| {variant} | {row['n']} | " + " | ".join(cells) + f" | {shares or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("python -m train.sparsity_report", __doc__)
    p.add_argument("study", type=Path, help="study folder written by python -m train.study")
    p.add_argument("--variants", nargs="+", default=["joint"], help="variant folders to read")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)

    def body() -> None:
        result = study_sparsity(args.study, args.variants)
        print(sparsity_table(result), end="")
        if args.json:
            write_text(args.json, json.dumps(result, indent=2) + "\n")
            print(f"numbers written to {args.json}")

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m train.evaluate``: Rank-k / mAP of a checkpoint, and of its exported artefact beside it.

The checkpoint is evaluated in PyTorch; with ``--artifact`` the exported folder is evaluated through
``engine.Embedder`` on ONNX Runtime (CPU) on the very same images, and the table shows both rows plus
the largest absolute difference per metric, then the largest embedding difference. That answers "does
the served model rank people as the trained one did" with numbers rather than a parity plot.
Exit codes: 0 done (and within ``--tolerance`` when comparing), 1 backends differ by more than
``--tolerance``, 2 bad arguments, data, checkpoint or artefact (the message says what to change).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import write_text
from engine.errors import JLMLError

from .__main__ import parse_key_value

DEFAULT_TOLERANCE = 0.01  # absolute, on Rank-k / mAP fractions: one query in 100 may flip
PYTORCH, ONNXRUNTIME, DIFF = "pytorch", "onnxruntime", "max abs diff"


def _metrics(query: np.ndarray, gallery: np.ndarray, data: Any, rerank: bool = False) -> dict[str, float]:
    from engine.metrics import evaluate
    from engine.rerank import RerankParams

    return evaluate(query, data.query_pids, data.query_cams, gallery, data.gallery_pids,
                    data.gallery_cams, protocol=data.protocol, rerank=RerankParams() if rerank else None)


def artifact_embeddings(artifact_dir: str | Path, spec: Any, images: list[np.ndarray],
                        ) -> list[np.ndarray]:
    """Embed each image array with the artefact on ONNX Runtime (CPU), checked against ``spec``."""
    from engine import Embedder

    with Embedder(artifact_dir, backend="ort", device="cpu", spec=spec) as embedder:
        return [embedder(batch) for batch in images]


def compare_backends(model: Any, data: Any, artifact_dir: str | Path | None = None, rerank: bool = False,
                     ) -> tuple[dict[str, dict[str, float]], float | None]:
    """Rows ``{"pytorch": metrics}`` and, with an artefact, its ``"onnxruntime"`` metrics and the max
    absolute difference of each metric; and the largest element-wise embedding difference (None
    without an artefact)."""
    from .loop import embed

    torch_emb = [embed(model, data.query_images), embed(model, data.gallery_images)]
    rows = {PYTORCH: _metrics(*torch_emb, data, rerank)}
    if artifact_dir is None:
        return rows, None
    ort_emb = artifact_embeddings(artifact_dir, model.spec, [data.query_images, data.gallery_images])
    rows[ONNXRUNTIME] = _metrics(*ort_emb, data, rerank)
    diff = {k: abs(rows[PYTORCH][k] - rows[ONNXRUNTIME][k]) for k in rows[PYTORCH] if k != "num_query"}
    rows[DIFF] = diff
    return rows, float(max(np.abs(a - b).max(initial=0.0) for a, b in zip(torch_emb, ort_emb, strict=True)))


def worst_difference(rows: dict[str, dict[str, float]]) -> float:
    """The largest metric difference between the backends (0 when only PyTorch was evaluated)."""
    return max(rows.get(DIFF, {}).values(), default=0.0)


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS

    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt written by python -m train")
    p.add_argument("--artifact", type=Path, help="folder written by python -m export.build_engine")
    p.add_argument("--dataset", choices=DATASETS, default="viper", help="data set (default: viper)")
    p.add_argument("--data-root", help="folder holding the data set (default: $JLML_DATA or ../shared/data)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="the split seed the checkpoint was trained with, so only its unseen test people "
                        "are evaluated (default 0)")
    p.add_argument("--data-option", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, repeatable (see python -m train --help)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest allowed metric difference between backends (default {DEFAULT_TOLERANCE})")
    p.add_argument("--rerank", action="store_true",
                   help="rank by k-reciprocal re-ranked distances (engine.rerank, k1=20 k2=6 lambda=0.3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the table's numbers to this JSON file")
    return p


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Load checkpoint and data, evaluate on every asked backend, print (and save) the table."""
    import torch

    from engine.metrics import format_table

    from .checkpoint import load_checkpoint
    from .data import load_reid_set

    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    data = load_reid_set(args.dataset, args.data_root, height=ck.config.height, width=ck.config.width,
                         split_seed=args.split_seed, **dict(args.data_option))
    print(data.describe())
    rows, embedding_diff = compare_backends(ck.model, data, args.artifact, args.rerank)
    print(format_table(rows), end="")
    if embedding_diff is not None:
        print(f"max abs embedding difference (unit vectors): {embedding_diff:.2e}")
    if args.json:
        write_text(args.json, json.dumps({"checkpoint": str(args.checkpoint), "artifact": str(args.artifact),
                                          "dataset": args.dataset, "split_seed": args.split_seed,
                                          "rows": rows, "max_embedding_diff": embedding_diff},
                                         indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = run(args)
    except JLMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worst = worst_difference(rows)
    if worst > args.tolerance:
        print(f"backends differ by {worst:.4f} > --tolerance {args.tolerance}; the artefact does not "
              "rank like the checkpoint (was it exported from another checkpoint?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

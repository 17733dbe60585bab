"""``python -m train.evaluate``: Rank-k / mAP of a checkpoint, and of its exported artefact beside it.

The data set, its loader options, the split and the folder it was read from come from the checkpoint,
so only the people the model never saw are scored, without naming --data-root again. Asking for another data set, split seed or option is refused unless
--allow-mismatch (a cross-data-set test, say): on another split the training people leak into the
test people and the figures mean nothing.

The checkpoint is evaluated in PyTorch; with --artifact the exported folder is evaluated through
engine.Embedder (--backend, --device, --precision) on the very same images, and the table shows both
rows, the largest absolute difference per metric and the largest embedding difference. FP16 or
TensorRT accuracy is one command:

  python -m train.evaluate --checkpoint runs/viper/last.pt --artifact art/ --backend trt --precision fp16

Exit codes: 0 done (and within --tolerance when comparing), 1 backends differ by more than
--tolerance, 2 bad arguments, data, checkpoint or artefact (the message says what to change).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import write_text
from engine.cli import add_no_progress, add_precision, add_threads, parser, run_cli, set_threads
from engine.errors import CheckpointError, InputError

from .cli import non_negative_float, parse_key_value
from .runner import DataChoice

DEFAULT_TOLERANCE = 0.01  # absolute, on Rank-k / mAP fractions: one query in 100 may flip
PYTORCH, DIFF = "pytorch", "max abs diff"
BACKENDS = ("auto", "trt", "ort", "torch")


def data_for(ckpt: Any, dataset: str | None = None, split_seed: int | None = None,
             options: dict[str, Any] | None = None, root: str | None = None,
             allow_mismatch: bool = False) -> DataChoice:
    """The data a checkpoint was trained on; what is asked (None: the checkpoint's) must agree unless
    ``allow_mismatch``."""
    recorded = ckpt.extra.get("data")
    root = root if root is not None else recorded_root(ckpt)
    if recorded is None:
        if dataset is None:
            raise CheckpointError(f"{ckpt.path} does not record the data set it was trained on (written "
                                  "before checkpoints did); pass --dataset, --split-seed and --data-option "
                                  "exactly as it was trained")
        return DataChoice(dataset, split_seed or 0, options or {}, root)
    trained = DataChoice(recorded["dataset"], recorded["split_seed"], recorded["options"], root)
    same_set = dataset in (None, trained.dataset)
    asked = DataChoice(dataset or trained.dataset, trained.split_seed if split_seed is None else split_seed,
                       options if options is not None else (trained.options if same_set else {}), root)
    diffs = [f"{k}: {v!r} in checkpoint, {asked.record()[k]!r} asked" for k, v in trained.record().items()
             if asked.record()[k] != v]
    if diffs and not allow_mismatch:
        raise CheckpointError(f"{ckpt.path} was trained on another data split than asked ({'; '.join(diffs)}); "
                              "scoring it there would count people it trained on; drop --dataset/--split-seed/"
                              "--data-option to use the checkpoint's, or pass --allow-mismatch (e.g. for a "
                              "cross-data-set test)")
    if diffs:
        print(f"warning: evaluating on other data than trained on ({'; '.join(diffs)})", file=sys.stderr)
    return asked


def recorded_root(ckpt: Any) -> str | None:
    """The data root the checkpoint was trained from, when it still exists here (None: the default,
    ``$JLML_DATA`` or ../shared/data, with a note when the recorded one is gone)."""
    root = ckpt.extra.get("data_root")
    if root is None or Path(root).is_dir():
        return root
    print(f"note: {ckpt.path} was trained on data in {root}, which is not here; looking in the default "
          "data root (pass --data-root to choose)", file=sys.stderr)
    return None


def artifact_embeddings(artifact_dir: str | Path, model: Any, images: list[np.ndarray], *, backend: str = "auto",
                        device: str = "auto", precision: str | None = None) -> tuple[str, list[np.ndarray]]:
    """Embed each image array through the artefact with ``engine.Embedder``, checked against the
    model's spec; returns the row name ("BACKEND PRECISION") and the embeddings."""
    from engine import Embedder

    module = copy.deepcopy(model) if backend == "torch" else None   # the torch backend moves it in place
    with Embedder(artifact_dir, backend=backend, device=device, precision=precision, spec=model.spec,
                  module=module) as embedder:
        return f"{embedder.backend_name} {embedder.precision}", [embedder(batch) for batch in images]


def compare_backends(model: Any, data: Any, artifact_dir: str | Path | None = None, rerank: bool = False,
                     **engine: str,
                     ) -> tuple[dict[str, dict[str, float]], float | None]:
    """Rows ``{"pytorch": metrics}`` and, with an artefact, its metrics (row "BACKEND PRECISION",
    ``engine`` = backend/device/precision of the Embedder) and the max absolute difference of each
    metric; and the largest element-wise embedding difference (None without an artefact)."""
    from .loop import embed_split, score_embeddings

    torch_emb = embed_split(model, data)
    rows = {PYTORCH: score_embeddings(*torch_emb, data, rerank)}
    if artifact_dir is None:
        return rows, None
    name, served = artifact_embeddings(artifact_dir, model, [data.query_images, data.gallery_images], **engine)
    rows[name] = score_embeddings(*served, data, rerank)
    rows[DIFF] = {k: abs(rows[PYTORCH][k] - rows[name][k]) for k in rows[PYTORCH] if k != "num_query"}
    return rows, float(max(np.abs(a - b).max(initial=0.0) for a, b in zip(torch_emb, served, strict=True)))


def worst_difference(rows: dict[str, dict[str, float]]) -> float:
    """The largest metric difference between the backends (0 when only PyTorch was evaluated)."""
    return max(rows.get(DIFF, {}).values(), default=0.0)


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS

    p = parser("python -m train.evaluate", __doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt written by python -m train")
    p.add_argument("--artifact", type=Path, help="folder written by python -m export.build_engine")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="engine backend for --artifact (auto: TensorRT where it exists, else ONNX Runtime)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (PyTorch and the engine)")
    add_precision(p)
    g = p.add_argument_group("data (None: what the checkpoint was trained on)")
    g.add_argument("--dataset", choices=DATASETS, help="data set")
    g.add_argument("--data-root", help="folder holding the data set (default: the one the checkpoint was "
                   "trained from, else $JLML_DATA or ../shared/data)")
    g.add_argument("--split-seed", type=int, help="split seed")
    g.add_argument("--data-option", type=parse_key_value, action="append", metavar="KEY=VALUE",
                   help="loader option, repeatable (see python -m train --help)")
    g.add_argument("--allow-mismatch", action="store_true",
                   help="evaluate on other data than the checkpoint was trained on")
    p.add_argument("--tolerance", type=non_negative_float, default=DEFAULT_TOLERANCE,
                   help="largest allowed metric difference between PyTorch and the engine")
    p.add_argument("--rerank", action="store_true",
                   help="rank by k-reciprocal re-ranked distances (engine.rerank, k1=20 k2=6 lambda=0.3)")
    add_threads(p)
    p.add_argument("--json", type=Path, help="also write the table's numbers to this JSON file")
    add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Load checkpoint and data, evaluate on every asked backend, print (and save) the table."""

    from engine.metrics import format_table

    from .checkpoint import load_checkpoint
    from .loop import Runtime, place

    set_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    choice = data_for(ck, args.dataset, args.split_seed, dict(args.data_option) if args.data_option else None,
                      args.data_root, args.allow_mismatch)
    data = choice.load(ck.config, progress=not args.no_progress)
    print(data.describe())
    model = ck.model.to(place(Runtime(device=args.device)).device)
    rows, embedding_diff = compare_backends(model, data, args.artifact, args.rerank, backend=args.backend,
                                            device=args.device, precision=args.precision)
    print(format_table(rows), end="")
    if embedding_diff is not None:
        print(f"max abs embedding difference (unit vectors): {embedding_diff:.2e}")
    if args.json:
        write_text(args.json, json.dumps({"checkpoint": str(args.checkpoint), "artifact": str(args.artifact),
                                          "dataset": choice.dataset, "split_seed": choice.split_seed,
                                          "data": choice.record(), "data_root": choice.root, "rows": rows,
                                          "max_embedding_diff": embedding_diff}, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return rows


def _evaluate(args: argparse.Namespace) -> int:
    engine_flags = [f"--{name} {getattr(args, name)}" for name, default in (("backend", "auto"), ("precision", None))
                    if getattr(args, name) != default]
    if args.artifact is None and engine_flags:
        raise InputError(f"{' '.join(engine_flags)} choose how --artifact is served, and no --artifact was given; "
                         "pass --artifact DIR too, or drop them")
    worst = worst_difference(run(args))
    if worst > args.tolerance:
        print(f"backends differ by {worst:.4f} > --tolerance {args.tolerance}; the artefact does not "
              "rank like the checkpoint (was it exported from another checkpoint?)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _evaluate(args), hint="nothing was written; run it again")


if __name__ == "__main__":
    sys.exit(main())

"""Training loop for JLML: random mini-batches, per-epoch atomic checkpoints and a JSON-lines log.

Every epoch's randomness (batch order, augmentation, dropout) is seeded from ``(seed, epoch)``, so a
run resumed from ``last.pt`` replays exactly the epochs an uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from engine.atomic import write_text
from engine.errors import CheckpointError, InputError

from .checkpoint import check_same_config, load_checkpoint, save_checkpoint
from .config import JLMLConfig
from .losses import JLMLLoss
from .model import JLML

CHECKPOINT_FILE = "last.pt"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
# Builds the epoch's augmentation from a seed (e.g. ``lambda s: Augment(seed=s)``), so resumed epochs
# see the same perturbations as uninterrupted ones.
AugmentFactory = Callable[[int], Callable[[torch.Tensor], torch.Tensor]]


class ReidData(Protocol):
    """What ``fit`` needs of a data set (``train.data.ReidSet`` is one)."""

    train_images: np.ndarray
    train_pids: np.ndarray
    query_images: np.ndarray
    query_pids: np.ndarray
    query_cams: np.ndarray
    gallery_images: np.ndarray
    gallery_pids: np.ndarray
    gallery_cams: np.ndarray
    protocol: str
    num_classes: int


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation settings of one run (the network itself is described by ``JLMLConfig``)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None          # None: DEFAULT_LR of the optimizer
    optimizer: str = "sgd"           # "sgd" (momentum 0.9, Nesterov) or "adam"
    schedule: str = "cosine"         # "cosine" to 0 over the run, or "step" (x0.1 at 2/3 of it)
    weight_decay: float = 5e-4
    seed: int = 0
    progress: bool = True            # tqdm bar per epoch

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError(f"epochs={self.epochs}, batch_size={self.batch_size}; need epochs >= 1 and "
                             "batch_size >= 2 (batch norm needs two samples)")
        if self.optimizer not in DEFAULT_LR or self.schedule not in ("cosine", "step"):
            raise InputError(f"optimizer {self.optimizer!r} / schedule {self.schedule!r}; choose "
                             f"{sorted(DEFAULT_LR)} and cosine/step")
        if (self.lr is not None and self.lr <= 0) or self.weight_decay < 0:
            raise InputError(f"lr={self.lr}, weight_decay={self.weight_decay}; need lr > 0, wd >= 0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class FitResult:
    """The trained model (eval mode), where its checkpoint is and one log record per epoch."""

    model: JLML
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def make_optimizer(model: JLML, opts: TrainOptions) -> tuple[torch.optim.Optimizer, Any]:
    params = model.param_groups(opts.learning_rate)
    if opts.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=opts.learning_rate, momentum=0.9,
                                                     nesterov=True, weight_decay=opts.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
    if opts.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.epochs)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, math.ceil(opts.epochs * 2 / 3)), gamma=0.1)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random mini-batches over one epoch; a last batch of one sample is dropped (batch norm)."""
    order = rng.permutation(n)
    return [b for b in np.array_split(order, range(batch_size, n, batch_size)) if len(b) > 1]


def _train_epoch(model: JLML, loss_fn: JLMLLoss, opt: torch.optim.Optimizer, data: ReidData,
                 opts: TrainOptions, epoch: int, make_augment: AugmentFactory | None) -> dict[str, Any]:
    """One pass over the training set; returns mean loss terms and identity accuracy."""
    epoch_seed = opts.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)
    rng = np.random.default_rng([opts.seed, epoch])
    augment = make_augment(epoch_seed) if make_augment else None
    model.train()
    sums: dict[str, float] = {}
    correct = seen = 0
    bar = tqdm(_batches(len(data.train_pids), opts.batch_size, rng), desc=f"epoch {epoch + 1}/{opts.epochs}",
               disable=not opts.progress, leave=False)
    for idx in bar:
        images = torch.from_numpy(data.train_images[idx])
        labels = torch.from_numpy(data.train_pids[idx]).long()
        logits = model.forward_head(model.forward_features(augment(images) if augment else images))
        terms = loss_fn(model, logits, labels)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        correct += int((sum(t.softmax(1) for t in logits.values()).argmax(1) == labels).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{sums['total'] / (seen):.3f}", acc=f"{correct / seen:.2f}")
    return {"loss": {k: v / max(seen, 1) for k, v in sums.items()}, "acc": correct / max(seen, 1)}


def load_matching(model: JLML, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the tensors of ``state`` whose name and shape match ``model``'s; return those left fresh.

    Pre-training on another data set shares everything but the classifiers (another number of
    identities), which keep their fresh initialisation.
    """
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def _start(cfg: JLMLConfig, data: ReidData, opts: TrainOptions, resume: Path | None,
           init: dict[str, torch.Tensor] | None = None,
           ) -> tuple[JLML, torch.optim.Optimizer, Any, int, list[dict[str, Any]]]:
    """A fresh model/optimiser/scheduler (from ``init`` weights where they match), or the state saved
    in ``resume`` after checking it matches."""
    torch.manual_seed(opts.seed)
    model = JLML(cfg, data.num_classes)
    opt, sched = make_optimizer(model, opts)
    if resume is None:
        if init is not None:
            load_matching(model, init)
        return model, opt, sched, 0, []
    ck = load_checkpoint(resume)
    check_same_config(ck, cfg, data.num_classes)
    _check_same_options(ck.extra.get("options", {}), opts, resume)
    model.load_state_dict(ck.model.state_dict())
    opt.load_state_dict(ck.optimizer_state)
    sched.load_state_dict(ck.scheduler_state)
    return model, opt, sched, ck.epoch, list(ck.extra.get("history", []))


def _check_same_options(saved: dict[str, Any], opts: TrainOptions, path: Path) -> None:
    """Resuming under other optimisation settings would silently mix two schedules; refuse it."""
    asked = dataclasses.asdict(opts)
    diffs = [f"{k}: {saved.get(k)!r} in checkpoint, {v!r} asked" for k, v in asked.items()
             if k != "progress" and saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: it was trained with other options "
                              f"({'; '.join(diffs)}); rerun with the same flags or start a fresh --out")


def fit(cfg: JLMLConfig, data: ReidData, opts: TrainOptions, out: str | Path, *, resume: str | Path | None = None,
        make_augment: AugmentFactory | None = None, init: dict[str, torch.Tensor] | None = None) -> FitResult:
    """Train ``cfg`` on ``data.train_*`` for ``opts.epochs`` epochs, writing ``out/last.pt`` and
    ``out/log.jsonl`` after every epoch; with ``resume`` continue that checkpoint's run. A fresh run
    starts from ``init`` (a pre-trained state dict) where names and shapes match (``load_matching``)."""
    out = Path(out)
    model, opt, sched, start, history = _start(cfg, data, opts, Path(resume) if resume else None, init)
    loss_fn = JLMLLoss(cfg)
    path = out / CHECKPOINT_FILE
    for epoch in range(start, opts.epochs):
        tic = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        record = _train_epoch(model, loss_fn, opt, data, opts, epoch, make_augment)
        sched.step()
        history.append({"epoch": epoch + 1, **record, "lr": lr, "time_s": time.perf_counter() - tic})
        save_checkpoint(path, model, cfg, epoch=epoch + 1, num_classes=data.num_classes, optimizer=opt,
                        scheduler=sched, extra={"history": history, "options": dataclasses.asdict(opts)})
        write_text(out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))
    return FitResult(model=model.eval(), checkpoint=path, history=history)


def embed(model: JLML, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Float32 (N, D) unit embeddings of uint8 (N, H, W, 3) ``images``, in eval mode, no autograd."""
    images = model.spec.check_images(images)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(torch.from_numpy(images[s:s + batch_size])).numpy()
                     for s in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.spec.embedding_dim), np.float32)


def evaluate_model(model: JLML, data: ReidData, batch_size: int = 256) -> dict[str, float]:
    """Rank-k and mAP of ``model`` on ``data``'s query/gallery split under its protocol."""
    from engine.metrics import evaluate

    query = embed(model, data.query_images, batch_size)
    gallery = embed(model, data.gallery_images, batch_size)
    return evaluate(query, data.query_pids, data.query_cams, gallery, data.gallery_pids, data.gallery_cams,
                    protocol=data.protocol)

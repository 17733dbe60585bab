"""Training loop for JLML: random mini-batches, per-epoch atomic checkpoints and a JSON-lines log.

Every epoch's randomness (batch order, augmentation, dropout) is seeded from ``(seed, epoch)`` and the
learning rate is a closed-form function of the epoch, so a run resumed from ``last.pt`` replays exactly
the epochs an uninterrupted run would have, and a finished run can be extended to more epochs.

The pieces data-parallel training swaps or wraps are kept apart: the sampler (``train.sampling``:
``EpochBatches``, or ``IdentityBatches`` for a triplet term; ``set_epoch`` like ``DistributedSampler``), ``train_step`` (one optimiser step under autocast and a
GradScaler) and ``RunWriter`` (the per-epoch checkpoint and log, which only one rank would write).
``Runtime`` says where a run trains (device, mixed precision, memory layout, loader workers); it never
changes what a run means, so a run may resume on another device.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import write_text
from engine.device import parse_device, torch_device
from engine.errors import BackendUnavailableError, CheckpointError, InputError
from engine.progress import progress

from . import distributed
from .checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    METRICS_FILE,
    InitReport,
    check_same_config,
    check_same_data,
    load_checkpoint,
    load_init,
    prepare_out,
    save_checkpoint,
)
from .config import JLMLConfig
from .data.reidset import ReidSet
from .losses import JLMLLoss
from .model import JLML
from .sampling import EpochBatches, IdentityBatches

__all__ = ["CHECKPOINT_FILE", "DEFAULT_LR", "LOG_FILE", "METRICS_FILE", "EpochBatches", "FitResult",
           "Runtime", "TrainOptions", "embed", "embed_split", "evaluate_model", "fit", "score_embeddings",
           "train_step"]

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
SCHEDULES = ("cosine", "step")
# Builds the epoch's augmentation from a seed (e.g. ``lambda s: Augment(seed=s)``), so resumed epochs
# see the same perturbations as uninterrupted ones.
AugmentFactory = Callable[[int], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation settings of one run (the network itself is described by ``JLMLConfig``).

    The default, Adam at 1e-3 with a cosine decay, trains from the first epoch; SGD at 0.05 (the
    other choice) barely moves the loss in a short run of these small networks.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None          # None: DEFAULT_LR of the optimizer
    optimizer: str = "adam"          # "adam" (AdamW: decoupled weight decay) or "sgd" (momentum 0.9, Nesterov)
    schedule: str = "cosine"         # "cosine" to 0 over the run, or "step" (x0.1 at 2/3 of it)
    weight_decay: float = 5e-4
    seed: int = 0
    progress: bool = True            # a bar per epoch on a terminal, one line per epoch in a log

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError(f"--epochs {self.epochs} / --batch-size {self.batch_size}; need epochs >= 1 "
                             "and batch size >= 2 (batch norm needs two samples)")
        if self.optimizer not in DEFAULT_LR or self.schedule not in SCHEDULES:
            raise InputError(f"--optimizer {self.optimizer!r} / --schedule {self.schedule!r}; choose "
                             f"{sorted(DEFAULT_LR)} and {SCHEDULES}")
        if (self.lr is not None and self.lr <= 0) or self.weight_decay < 0:
            raise InputError(f"--lr {self.lr} / --weight-decay {self.weight_decay}; need lr > 0, decay >= 0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def settings(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues (all but ``progress``)."""
        return {k: v for k, v in asdict(self).items() if k != "progress"}


@dataclass(frozen=True)
class Runtime:
    """Where a run trains: ``device`` "auto" | "cpu" | "cuda[:N]"; ``amp``: mixed precision on CUDA
    (bf16 where the GPU has it, else fp16 with a GradScaler); ``channels_last`` (None: on for CUDA,
    where convolutions run faster in NHWC); ``workers``: loader processes (None: 4 on CUDA, 0 on CPU)."""

    device: str = "auto"
    amp: bool = False
    channels_last: bool | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        try:
            parse_device(self.device)
        except InputError as exc:
            raise InputError(f"--device {self.device!r}; expected auto, cpu, cuda or cuda:N") from exc
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {self.workers}; expected 0 (load in the training process) or more")


@dataclass(frozen=True)
class Placement:
    """A ``Runtime`` resolved on this machine."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    workers: int


def place(runtime: Runtime) -> Placement:
    """Resolve ``runtime`` here: CUDA must exist when asked for, ``amp`` needs CUDA."""
    try:
        device = torch_device(runtime.device, torch)
    except BackendUnavailableError as exc:
        raise InputError(f"--device {runtime.device}: this PyTorch sees no CUDA GPU; pass --device cpu "
                         "(or auto), or install a CUDA build of torch (see README)") from exc
    cuda = device.type == "cuda"
    if runtime.amp and not cuda:
        raise InputError(f"--amp (mixed precision) needs a CUDA device, the run is on {device}; drop --amp "
                         "or pass --device cuda")
    amp_dtype = None
    if runtime.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    workers = runtime.workers if runtime.workers is not None else (min(4, os.cpu_count() or 1) if cuda else 0)
    return Placement(device, amp_dtype, cuda if runtime.channels_last is None else runtime.channels_last,
                     workers)


@dataclass
class FitResult:
    """The trained model (eval mode, on the run's device), its checkpoint and one record per epoch."""

    model: JLML
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    init: InitReport | None = None


class TrainPixels(torch.utils.data.Dataset):
    """Indexed by a whole batch of indices: (uint8 NHWC images, int64 labels)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[idx]), torch.from_numpy(self.labels[idx]).long()


Sampler = EpochBatches | IdentityBatches | distributed.ShardedBatches


def make_sampler(cfg: JLMLConfig, data: ReidSet, opts: TrainOptions) -> Sampler:
    """This process's batches: random ones, or people in pairs when the loss has a triplet term."""
    if cfg.triplet_weight > 0:
        batches: EpochBatches | IdentityBatches = IdentityBatches(
            data.train_pids, data.train_cams, opts.batch_size, opts.seed, processes=distributed.world().size)
    else:
        batches = EpochBatches(len(data.train_pids), opts.batch_size, opts.seed)
    return distributed.shard(batches)


def make_loader(data: ReidSet, sampler: Sampler,
                where: Placement) -> torch.utils.data.DataLoader:
    """Batches gathered by ``where.workers`` persistent processes into pinned memory when on CUDA.

    The loader gets its own generator so it never draws from the global RNG that seeds dropout.
    """
    return torch.utils.data.DataLoader(
        TrainPixels(data.train_images, data.train_pids), sampler=sampler, batch_size=None,
        num_workers=where.workers, persistent_workers=where.workers > 0,
        pin_memory=where.device.type == "cuda", generator=torch.Generator())


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of 0-based ``epoch`` in a run of ``epochs``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 0.1 if epoch >= max(1, math.ceil(epochs * 2 / 3)) else 1.0


def make_optimizer(model: JLML, opts: TrainOptions) -> torch.optim.Optimizer:
    """The optimiser over ``model.param_groups`` (each group keeps its own ``base_lr``)."""
    groups = model.param_groups(opts.learning_rate)
    for group in groups:
        group["base_lr"] = group.get("lr", opts.learning_rate)
    if opts.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=opts.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=opts.weight_decay)
    return torch.optim.AdamW(groups, lr=opts.learning_rate, weight_decay=opts.weight_decay)


def train_step(model: JLML, loss_fn: JLMLLoss, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None,
               net: torch.nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One optimiser step on a batch already on the device; returns the loss terms and the logits.
    ``net`` (data-parallel runs: ``distributed.data_parallel``) computes the features and logits in one call."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features, logits = (net or model.forward_train)(images)
    logits = {k: v.float() for k, v in logits.items()}
    terms = loss_fn(model, logits, labels, features)
    opt.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(opt)
    scaler.update()
    return terms, logits


def _train_epoch(model: JLML, loss_fn: JLMLLoss, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 loader: torch.utils.data.DataLoader, sampler: Sampler,
                 where: Placement, opts: TrainOptions, epoch: int, make_augment: AugmentFactory | None,
                 net: torch.nn.Module | None = None) -> dict[str, Any]:
    """One pass over the training set; returns mean loss terms and identity accuracy."""
    epoch_seed = distributed.rank_seed(opts.seed * 100_003 + epoch)
    torch.manual_seed(epoch_seed)
    sampler.set_epoch(epoch)
    augment = make_augment(epoch_seed) if make_augment else None
    model.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.int64, device=where.device)
    seen = 0
    bar = progress(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batches", disable=not opts.progress,
                   leave=False, every=1.0)  # off a terminal: one line per epoch
    for step, (images, labels) in enumerate(bar):
        images = images.to(where.device, non_blocking=True)
        labels = labels.to(where.device, non_blocking=True)
        terms, logits = train_step(model, loss_fn, opt, scaler, augment(images) if augment else images,
                                   labels, where.amp_dtype, net)
        for k, v in terms.items():  # summed on the device: no host sync per step
            sums[k] = sums.get(k, 0.0) + v.detach() * len(labels)
        correct += (torch.stack([t.softmax(1) for t in logits.values()]).sum(0).argmax(1) == labels).sum()
        seen += len(labels)
        if opts.progress and step % 10 == 0:
            bar.set_postfix(loss=f"{float(sums['total']) / seen:.3f}", acc=f"{int(correct) / seen:.2f}")
    return {"loss": {k: float(v) / max(seen, 1) for k, v in sums.items()}, "acc": int(correct) / max(seen, 1)}


class RunWriter:
    """Writes a run's per-epoch files atomically: ``last.pt`` and ``log.jsonl``."""

    def __init__(self, out: Path, cfg: JLMLConfig, num_classes: int, opts: TrainOptions,
                 record: dict[str, Any]) -> None:
        self.out, self.cfg, self.num_classes, self.opts, self.record = out, cfg, num_classes, opts, record
        self.path = out / CHECKPOINT_FILE

    def write(self, model: JLML, opt: torch.optim.Optimizer, epoch: int, history: list[dict[str, Any]]) -> None:
        save_checkpoint(self.path, model, self.cfg, epoch=epoch, num_classes=self.num_classes, optimizer=opt,
                        extra={**self.record, "history": history, "options": self.opts.settings()})
        write_text(self.out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))


def _check_resumable(saved: dict[str, Any], opts: TrainOptions, done: int, path: Path) -> None:
    """Resuming under other optimisation settings would silently mix two runs; refuse it. More epochs
    than the run had are fine (the schedule stretches to the new length)."""
    diffs = [f"{k}: {saved.get(k)!r} in checkpoint, {v!r} asked" for k, v in opts.settings().items()
             if k != "epochs" and saved.get(k) != v]
    if opts.epochs < done:
        diffs.append(f"epochs: {done} done in checkpoint, {opts.epochs} asked (need at least {done})")
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: it was trained with other options "
                              f"({'; '.join(diffs)}); rerun with the same flags or start a fresh --out")


def _start(cfg: JLMLConfig, data: ReidSet, opts: TrainOptions, where: Placement, resume: Path | None,
           init: dict[str, torch.Tensor] | None, init_source: str, record: dict[str, Any],
           ) -> tuple[JLML, torch.optim.Optimizer, int, list[dict[str, Any]], InitReport | None]:
    """A fresh model and optimiser (from ``init`` weights), or the state saved in ``resume`` after
    checking it matches (model, options and the data ``record``); on the run's device."""
    torch.manual_seed(opts.seed)
    model = JLML(cfg, data.num_classes)
    ck = load_checkpoint(resume) if resume is not None else None
    report = None
    if ck is not None:
        check_same_data(ck, record)
        check_same_config(ck, cfg, data.num_classes)
        _check_resumable(ck.extra.get("options", {}), opts, ck.epoch, ck.path)
        model.load_state_dict(ck.trained_network().state_dict())
    elif init is not None:
        report = load_init(model, init, init_source)
    layout = torch.channels_last if where.channels_last else torch.preserve_format
    model.to(where.device, memory_format=layout)  # type: ignore[call-overload]  # (stubs lack the keyword)
    opt = make_optimizer(model, opts)
    if ck is None:
        return model, opt, 0, [], report
    if ck.optimizer_state is None:
        raise CheckpointError(f"cannot resume from {ck.path}: it holds weights but no optimiser state (it was "
                              "not written by a training run); fine-tune from it with --init instead")
    opt.load_state_dict(ck.optimizer_state)
    return model, opt, ck.epoch, list(ck.extra.get("history", [])), None


def fit(cfg: JLMLConfig, data: ReidSet, opts: TrainOptions, out: str | Path, *, resume: str | Path | None = None,
        make_augment: AugmentFactory | None = None, init: dict[str, torch.Tensor] | None = None,
        init_source: str | None = None, runtime: Runtime | None = None, overwrite: bool = False,
        record: dict[str, Any] | None = None) -> FitResult:
    """Train ``cfg`` on ``data.train_*`` for ``opts.epochs`` epochs, writing ``out/last.pt`` and
    ``out/log.jsonl`` after every epoch; with ``resume`` continue that checkpoint's run (to
    ``opts.epochs``, which may be more than it had). A fresh run starts from ``init`` (a state dict of
    the same network, classifiers aside: ``load_init``) and refuses an ``out`` that holds a checkpoint
    unless ``overwrite``. ``record`` (e.g. the data set and split) is stored in the checkpoint."""
    out = Path(out)
    prepare_out(out, resume=resume is not None, overwrite=overwrite)
    where = place(runtime or Runtime())
    where = replace(where, device=distributed.setup(where.device))  # under torchrun: join, pick the GPU
    opts = replace(opts, progress=opts.progress and distributed.is_main())
    model, opt, start, history, report = _start(cfg, data, opts, where, Path(resume) if resume else None, init,
                                                init_source or "init weights", dict(record or {}))
    if report is not None:
        print(report.describe())
    net = distributed.data_parallel(model, where.device)  # None in one process
    scaler = torch.amp.GradScaler(where.device.type, enabled=where.amp_dtype == torch.float16)
    sampler = make_sampler(cfg, data, opts)
    loader = make_loader(data, sampler, where)
    loss_fn, writer = JLMLLoss(cfg), RunWriter(out, cfg, data.num_classes, opts, dict(record or {}))
    for epoch in range(start, opts.epochs):
        tic = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(opts.schedule, epoch, opts.epochs)
        lr = opt.param_groups[0]["lr"]
        stats = _train_epoch(model, loss_fn, opt, scaler, loader, sampler, where, opts, epoch, make_augment, net)
        stats = distributed.gather_epoch(stats, sampler, where.device)
        history.append({"epoch": epoch + 1, **stats, "lr": lr, "time_s": time.perf_counter() - tic})
        if distributed.is_main():
            writer.write(model, opt, epoch + 1, history)
    distributed.barrier()  # the last checkpoint is complete before any rank moves on
    return FitResult(model=model.eval(), checkpoint=writer.path, history=history, init=report)


def embed(model: JLML, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Float32 (N, D) unit embeddings of uint8 (N, H, W, 3) ``images``, in eval mode, no autograd,
    on whatever device the model is."""
    images = model.spec.check_images(images)
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(torch.from_numpy(images[s:s + batch_size]).to(device)).float().cpu().numpy()
                     for s in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.spec.embedding_dim), np.float32)


def evaluate_model(model: JLML, data: ReidSet, batch_size: int = 256) -> dict[str, float]:
    """Rank-k and mAP of ``model`` on ``data``'s query/gallery split under its protocol."""
    return score_embeddings(*embed_split(model, data, batch_size), data)


def embed_split(model: JLML, data: ReidSet, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s embeddings of ``data``'s query and gallery images."""
    return embed(model, data.query_images, batch_size), embed(model, data.gallery_images, batch_size)


def score_embeddings(query: np.ndarray, gallery: np.ndarray, data: ReidSet, rerank: bool = False,
                     ) -> dict[str, float]:
    """Rank-k and mAP of ``query`` against ``gallery`` embeddings of ``data``'s split under its protocol;
    ``rerank``: on k-reciprocal re-ranked distances (engine.rerank's default parameters)."""
    from engine.metrics import evaluate
    from engine.rerank import RerankParams

    return evaluate(query, data.query_pids, data.query_cams, gallery, data.gallery_pids, data.gallery_cams,
                    protocol=data.protocol, rerank=RerankParams() if rerank else None)

"""Data-parallel training under ``torchrun``: process group, sharded batches, DDP, one writer.

``torchrun --nproc-per-node N -m train ...`` starts N copies of the training command; each reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment and joins one process group (``nccl`` on CUDA,
``gloo`` on CPU). Launched without torchrun (or with WORLD_SIZE=1) every function here is a no-op and
the run is the plain one-process run. Why the run means the same at any world size:

- ``--batch-size`` is the *global* batch. Each step every rank trains on an equal share of the very
  batch one process would draw (``ShardedBatches``); at most ``world_size - 1`` samples of an epoch's
  last, partial batch are dropped so the shares stay equal.
- DDP averages the ranks' gradients. With equal shares the average of the per-rank mean losses is the
  global mean loss, so the per-rank loss needs no scaling (the factor ``world_size * n_rank / n_global``
  is 1). The structured-sparsity penalty is a function of the weights alone, the same on every rank, so
  its averaged gradient is its gradient: added once, as in one process. (Scaling each rank's loss by
  ``world_size``, as sum-reduced schemes do, would count it ``world_size`` times.)
- BatchNorm normalises with the statistics of the global batch: ``nn.SyncBatchNorm`` on CUDA; on CPU,
  where torch's SyncBatchNorm has no kernels, ``GlobalBatchNorm2d`` (per-channel sums all-reduced with
  gradients). Running statistics match one process too.
- Dropout and augmentation draw from per-rank seeds (``rank_seed``; rank 0 keeps the one-process seed),
  so the ranks' shares get independent masks; with neither, the run equals the one-process run up to
  float rounding.
- Only rank 0 writes the checkpoint and log (atomically, via ``train.checkpoint``); the per-epoch
  metrics are gathered once per epoch with one all_reduce. The checkpoint holds the epoch, weights and
  optimiser state (its step counts are the global step); every epoch reseeds from ``(seed, epoch)``, so
  no RNG state is needed and a run resumes at any other world size.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from engine.errors import InputError

from .model import JLML

__all__ = ["GlobalBatchNorm2d", "ShardedBatches", "World", "barrier", "data_parallel", "destroy",
           "gather_epoch", "is_main", "launched", "rank_seed", "setup", "shard", "world"]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_LAUNCH_HINT = "launch with `torchrun --nproc-per-node N -m train ...`, which sets them"


@dataclass(frozen=True)
class World:
    """This process's place: global ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def _env_world() -> World:
    """The world torchrun describes in the environment (one process when it set nothing)."""
    values = {}
    for name, default in zip(ENV_VARS, ("0", "1", "0"), strict=True):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise InputError(f"environment variable {name}={text!r} is not a whole number; "
                             f"{_LAUNCH_HINT}") from None
    w = World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if w.size < 1 or not 0 <= w.rank < w.size or w.local_rank < 0:
        raise InputError(f"RANK={w.rank} WORLD_SIZE={w.size} LOCAL_RANK={w.local_rank}; expected "
                         f"0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; {_LAUNCH_HINT}")
    return w


def launched() -> bool:
    """True when torchrun started this process as one of several (it never raises: a malformed
    environment is reported by ``setup``)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """The process group's world once joined, else the one the environment announces."""
    if _joined():
        return World(dist.get_rank(), dist.get_world_size(), _env_world().local_rank)
    return _env_world()


def is_main() -> bool:
    """True on the rank that writes files and prints (rank 0; the only process without torchrun)."""
    return world().rank == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _joined():
        dist.barrier()


def destroy() -> None:
    """Leave the process group, if this process joined one (call once, at the end of the program)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup(device: torch.device) -> torch.device:
    """Join the group torchrun describes (``nccl`` on CUDA, ``gloo`` on CPU) and return this rank's
    device: on CUDA the GPU of its local rank. Idempotent; one process: ``device`` unchanged."""
    w = _env_world()
    if w.size == 1:
        return device
    if device.type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK={w.local_rank} but this machine shows {torch.cuda.device_count()} "
                             "GPU(s); pass --nproc-per-node at most the number of GPUs")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise InputError(f"WORLD_SIZE={w.size} but {', '.join(missing)} is not set; {_LAUNCH_HINT}")
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return device


def rank_seed(seed: int) -> int:
    """This rank's seed for ``seed``: rank 0 (and one process) keep it, the others get disjoint ones."""
    return seed + (world().rank << 32)


class BatchSampler(Protocol):
    """What ``ShardedBatches`` wraps (``train.loop.EpochBatches`` is one)."""

    batch_size: int

    def set_epoch(self, epoch: int) -> None: ...
    def batches(self) -> list[np.ndarray]: ...


class ShardedBatches:
    """This rank's share of every global batch of ``batches``: what ``DistributedSampler(shuffle=False,
    drop_last=True)`` does to a data set, done to each batch, so the ranks' shares of step k together
    are exactly the batch one process trains on at step k (less the tail of a last batch that does not
    split evenly). Every rank computes the same global batches, so all take the same number of steps."""

    def __init__(self, batches: BatchSampler, w: World) -> None:
        if batches.batch_size % w.size:
            raise InputError(f"--batch-size {batches.batch_size} does not split evenly over {w.size} "
                             f"processes; pass a multiple of {w.size} (it is the global batch)")
        self.inner, self.world = batches, w

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches, each cut to a multiple of the world size (and >= 2 samples)."""
        size = self.world.size
        cut = [b[:len(b) - len(b) % size] for b in self.inner.batches()]
        return [b for b in cut if len(b) >= max(2, size)]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (b[self.world.rank::self.world.size] for b in self.global_batches())

    def __len__(self) -> int:
        return len(self.global_batches())

    def samples(self) -> int:
        """How many samples this rank trains on in the current epoch."""
        return sum(len(b) for b in self.global_batches()) // self.world.size


Sampler = TypeVar("Sampler", bound=BatchSampler)


def shard(batches: Sampler) -> Sampler | ShardedBatches:
    """``batches`` itself in one process, else this rank's ``ShardedBatches`` of it."""
    return ShardedBatches(batches, world()) if _joined() else batches


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients (as SyncBatchNorm's backward)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, when training in a process group, normalises with the statistics of the
    global batch (per-channel count, sum and sum of squares all-reduced in float64), and updates its
    running statistics from them like one process on that batch. Otherwise plain BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _joined()):
            return super().forward(x)
        self._check_input_dim(x)
        x64 = x.double()
        count = x64.new_full((x.shape[1],), x.numel() / x.shape[1])
        count, total, squares = _AllReduceSum.apply(
            torch.stack([count, x64.sum(dim=(0, 2, 3)), x64.square().sum(dim=(0, 2, 3))])).unbind(0)
        mean = total / count
        var = squares / count - mean.square()
        rm, rv, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if self.track_running_stats and rm is not None and rv is not None and tracked is not None:
            self._update_running(rm, rv, tracked, mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        shape = (1, -1, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _update_running(self, running_mean: Tensor, running_var: Tensor, tracked: Tensor, mean: Tensor,
                        unbiased_var: Tensor) -> None:
        tracked.add_(1)
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_(unbiased_var.to(running_var.dtype), factor)


def _to_global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d replaced by a ``GlobalBatchNorm2d`` sharing its parameters and
    buffers (so an optimiser built before still holds the right tensors)."""
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(new, name, tensor)
        return new.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _to_global_batch_norm(child))
    return module


class _TrainForward(nn.Module):
    """The training forward as one call (DDP hooks only ``forward``): images -> (features, logits)."""

    def __init__(self, model: JLML) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self.model.forward_train(images)


def data_parallel(model: JLML, device: torch.device) -> nn.Module | None:
    """In a process group: convert ``model``'s BatchNorm to global-batch statistics (in place) and
    return the DDP module whose call gives the training features and logits; in one process: None.

    Every JLML ablation uses all its parameters in every step (tests/train/test_distributed.py checks
    it), so ``find_unused_parameters`` stays off. Buffers are not broadcast: synchronised BatchNorm
    keeps the running statistics equal on every rank.
    """
    if not _joined():
        return None
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        _to_global_batch_norm(model)
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers (deprecated) to forward_sync_buffers; both keep the init sync.
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    options: dict[str, Any] = {no_sync: False, "device_ids": [device.index] if device.type == "cuda" else None}
    return ddp(_TrainForward(model), **options)


def gather_epoch(stats: dict[str, Any], sampler: object, device: torch.device) -> dict[str, Any]:
    """The epoch's mean loss terms and accuracy over all ranks (one all_reduce), plus ``world_size``
    and ``samples``; ``stats`` unchanged in one process. ``sampler`` is the epoch's ``ShardedBatches``."""
    if not _joined() or not isinstance(sampler, ShardedBatches):
        return stats
    keys = sorted(stats["loss"])
    n = sampler.samples()
    local = [stats["loss"][k] * n for k in keys] + [stats["acc"] * n, n]
    sums = torch.tensor(local, dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    total = float(sums[-1])
    means = [float(v) / max(total, 1.0) for v in sums[:-1]]
    return {**stats, "loss": dict(zip(keys, means[:-1], strict=True)), "acc": means[-1],
            "world_size": dist.get_world_size(), "samples": int(total)}

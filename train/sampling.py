"""The training samplers: which images form each mini-batch of an epoch.

Both are seeded from ``(seed, epoch)`` (``set_epoch`` like ``DistributedSampler``), so a resumed run
replays the batches of an uninterrupted one, and both yield index arrays that ``train.distributed``'s
``ShardedBatches`` can split over processes.

- ``EpochBatches``: a random permutation of the training images cut into batches (the default).
- ``IdentityBatches``: P people x 2 images a batch, for a batch-hard triplet term, which needs a
  positive beside every anchor. Each person gives one image from each of two cameras when it has two
  cameras (so every positive pair crosses cameras, as re-id's query/gallery pairs do), else two random
  images of its own. An epoch visits every person once.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.errors import InputError


class _EpochSampler:
    """What both samplers share: the epoch ``set_epoch`` picks, and iterating over ``batches()``."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())


class EpochBatches(_EpochSampler):
    """Seeded random mini-batches of one epoch (index arrays); ``set_epoch`` picks the epoch.

    A last batch of one sample is dropped (batch norm needs two).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def batches(self) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return [b for b in np.array_split(order, range(self.batch_size, self.n, self.batch_size)) if len(b) > 1]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 1)


class IdentityBatches(_EpochSampler):
    """Batches of P = ``batch_size // 2`` people with 2 images each, laid out as [first images, second
    images]: person i's pair sits at positions i and P + i. ``processes`` (the data-parallel world size)
    must divide P, and a last, smaller batch is cut to a multiple of it, so ``ShardedBatches``' strided
    split keeps every pair on one process. A batch of fewer than two people is dropped (a triplet needs
    a negative)."""

    def __init__(self, pids: np.ndarray, cams: np.ndarray, batch_size: int, seed: int, processes: int = 1) -> None:
        if batch_size < 4 or batch_size % (2 * processes):
            raise InputError(f"--batch-size {batch_size} with a triplet term: expected a multiple of "
                             f"{2 * processes} (2 images a person x {processes} process(es)), at least 4")
        people, index = np.unique(np.asarray(pids), return_inverse=True)
        counts = np.bincount(index, minlength=len(people))
        if counts.min() < 2:
            lone = people[counts < 2]
            raise InputError(f"{len(lone)} training identities have a single image (e.g. {lone[0]}); a triplet "
                             "term needs 2 images of each person; drop them or set triplet_weight to 0")
        self.images = [np.flatnonzero(index == i) for i in range(len(people))]
        self.cams = np.asarray(cams)
        self.batch_size, self.seed, self.processes = batch_size, seed, processes

    def _pair(self, rng: np.random.Generator, images: np.ndarray) -> tuple[int, int]:
        """Two images of one person, from two different cameras where it has two."""
        first = int(rng.choice(images))
        other = images[self.cams[images] != self.cams[first]]
        return first, int(rng.choice(other if len(other) else images[images != first]))

    def batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pairs = [self._pair(rng, self.images[p]) for p in rng.permutation(len(self.images))]
        per, step = self.batch_size // 2, self.processes
        groups = [pairs[i:i + per] for i in range(0, len(pairs), per)]
        groups = [g[:len(g) - len(g) % step] for g in groups]
        return [np.array([a for a, _ in g] + [b for _, b in g], dtype=np.int64) for g in groups if len(g) >= max(2, step)]

    def __len__(self) -> int:
        return len(self.batches())  # every epoch has as many (its people are only reordered)

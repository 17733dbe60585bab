"""Several data sets' training people as one training set (pre-training on everything available).

The identities of each set keep apart: set k's training ids are shifted past those of sets 0..k-1,
so two people never share a class. Query and gallery are the first set's (pre-training never
evaluates them). Every set must have been loaded at the same image size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import DataError

from .reidset import ReidSet, make_reid_set


def combine_train_sets(sets: Sequence[ReidSet]) -> ReidSet:
    """One ``ReidSet`` whose train part holds every set's train images under distinct ids."""
    if not sets:
        raise DataError("combine_train_sets got no data sets; pass at least one ReidSet")
    sizes = {s.image_size for s in sets}
    if len(sizes) != 1:
        raise DataError(f"cannot combine data sets of different image sizes {sorted(sizes)}; load "
                        "them all at the model's height and width")
    offsets = np.cumsum([0] + [s.num_classes for s in sets[:-1]])
    train = (np.concatenate([s.train_images for s in sets]),
             np.concatenate([s.train_pids + off for s, off in zip(sets, offsets, strict=True)]),
             np.concatenate([s.train_cams for s in sets]))
    return _with_train(sets[0], train, "+".join(s.name for s in sets), sum(s.skipped for s in sets))


def everyone(data: ReidSet) -> ReidSet:
    """``data`` with its query and gallery people added to its training ids: every person of the set
    trains (a set joined to another one's training, never evaluated itself). The test people get ids
    after the training ones (one id per person, whatever the camera); Market junk (-1) and distractor
    (0) images are left out, being no one's."""
    pids = np.concatenate([data.query_pids, data.gallery_pids])
    keep = pids > 0 if data.protocol == "market" else np.ones(len(pids), bool)
    images = np.concatenate([data.query_images, data.gallery_images])[keep]
    cams = np.concatenate([data.query_cams, data.gallery_cams])[keep]
    ids = np.unique(pids[keep], return_inverse=True)[1].reshape(-1) + data.num_classes
    train = (np.concatenate([data.train_images, images]), np.concatenate([data.train_pids, ids]),
             np.concatenate([data.train_cams, cams]))
    return _with_train(data, train, f"{data.name}(everyone)", data.skipped)


def _with_train(data: ReidSet, train: tuple[np.ndarray, np.ndarray, np.ndarray], name: str,
                skipped: int) -> ReidSet:
    """A set named ``name`` with the (images, pids, cams) ``train`` part and ``data``'s query and gallery."""
    parts = {"train": train, "query": (data.query_images, data.query_pids, data.query_cams),
             "gallery": (data.gallery_images, data.gallery_pids, data.gallery_cams)}
    return make_reid_set(name, data.protocol, parts, skipped=skipped)

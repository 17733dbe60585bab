"""``ReidSet``: one split of one re-id data set, held in memory as uint8 pixels and int64 labels.

Training ids are remapped to 0..num_classes-1 (what a classifier head needs); query and gallery keep
the data set's own person ids, because the evaluator only compares them for equality and the Market
protocol needs the raw -1 (junk) and 0 (distractor) values. Cameras are 0-based everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import DataError

PROTOCOLS = ("single_shot", "market")
PARTS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ReidSet:
    """Train / query / gallery images and labels of one data set split (see module docstring).

    ``protocol`` tells the evaluator which gallery entries to ignore: "single_shot" ignores none,
    "market" ignores junk (pid -1) and same-pid-same-camera matches and treats pid 0 as a negative.
    """

    name: str
    train_images: np.ndarray
    train_pids: np.ndarray
    train_cams: np.ndarray
    query_images: np.ndarray
    query_pids: np.ndarray
    query_cams: np.ndarray
    gallery_images: np.ndarray
    gallery_pids: np.ndarray
    gallery_cams: np.ndarray
    protocol: str
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DataError(f"{self.name}: protocol {self.protocol!r} is unknown, expected one of "
                            f"{PROTOCOLS}")
        for part in PARTS:
            images, pids, cams = (getattr(self, f"{part}_{k}") for k in ("images", "pids", "cams"))
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise DataError(f"{self.name}: {part}_images must be uint8 (N, H, W, 3), got "
                                f"{images.dtype} {images.shape}")
            if pids.shape != (len(images),) or cams.shape != (len(images),):
                raise DataError(f"{self.name}: {part} has {len(images)} images but pids "
                                f"{pids.shape} and cams {cams.shape}; need one label per image")
        n = self.num_classes
        if len(self.train_pids) and not np.array_equal(np.unique(self.train_pids), np.arange(n)):
            raise DataError(f"{self.name}: train pids must be remapped to 0..{n - 1} with none "
                            "missing; build the set with make_reid_set")

    @property
    def num_classes(self) -> int:
        """Number of training identities (the classifier head's width)."""
        return int(self.train_pids.max()) + 1 if len(self.train_pids) else 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image in the set."""
        return tuple(self.train_images.shape[1:3])  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for logs: ids and images of each part, so a wrong split is visible at a glance."""
        def ids(pids: np.ndarray) -> int:
            return int(np.unique(pids[pids > 0] if self.protocol == "market" else pids).size)

        h, w = self.image_size
        text = (f"{self.name} ({self.protocol}, {h}x{w}): train {self.num_classes} ids / "
                f"{len(self.train_pids)} imgs, query {ids(self.query_pids)} ids / "
                f"{len(self.query_pids)} imgs, gallery {ids(self.gallery_pids)} ids / "
                f"{len(self.gallery_pids)} imgs")
        return text + (f", {self.skipped} unreadable skipped" if self.skipped else "")


def make_reid_set(
    name: str,
    protocol: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    skipped: int = 0,
) -> ReidSet:
    """Build a ``ReidSet`` from raw (images, pids, cams) per part, remapping the training pids.

    Every loader goes through here so the remapping and the dtype rules exist once.
    """
    fields: dict[str, np.ndarray] = {}
    for part in PARTS:
        images, pids, cams = parts[part]
        pids, cams = np.asarray(pids, np.int64), np.asarray(cams, np.int64)
        if part == "train":
            pids = np.unique(pids, return_inverse=True)[1].reshape(-1).astype(np.int64)
        fields.update({f"{part}_images": np.ascontiguousarray(images, np.uint8),
                       f"{part}_pids": pids, f"{part}_cams": cams})
    return ReidSet(name=name, protocol=protocol, skipped=skipped, **fields)

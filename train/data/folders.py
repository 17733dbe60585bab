"""Shared machinery of the on-disk loaders: root checks, file-name parsing, id splits, image loading.

Each loader (VIPeR, PRID2011, Market-1501 layout) only says which files go to which part with which
labels; reading, skipping unreadable files and building the ``ReidSet`` happens once, here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import DataError
from engine.images import IMAGE_SUFFIXES, load_images

from .reidset import PARTS, ReidSet, make_reid_set


@dataclass(frozen=True)
class Record:
    """One image file and its labels, before decoding."""

    path: Path
    pid: int
    cam: int


def check_root(root: Path, name: str) -> Path:
    """Return ``root`` if it is a non-empty folder, else raise a DataError saying what to pass."""
    if not root.is_dir():
        raise DataError(f"{name}: data set root {root} does not exist (or is not a folder); pass "
                        f"--data-root (root= from Python) pointing at the {name} folder or its parent")
    if not any(root.iterdir()):
        raise DataError(f"{name}: data set root {root} is empty; download or unpack {name} there")
    return root


def parse_folder(folder: Path, pattern: re.Pattern[str], name: str, expected: str) -> list[tuple[Path, re.Match[str]]]:
    """Match every image file in ``folder`` against ``pattern``; all must match, at least one must exist.

    A folder of images with the wrong names means the wrong layout was given, which must fail loudly
    rather than load half a data set.
    """
    if not folder.is_dir():
        raise DataError(f"{name}: expected folder {folder} ({expected}); the root does not have "
                        f"the {name} layout")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    matched = [(p, pattern.match(p.name)) for p in files]
    bad = [p.name for p, m in matched if m is None]
    if not files or bad:
        found = ", ".join(bad[:3]) if bad else "no image files"
        raise DataError(f"{name}: {folder} does not have the {name} layout: expected {expected}, "
                        f"found {found}")
    return [(p, m) for p, m in matched if m is not None]


def split_people(pids: Iterable[int], num_train: int, num_test: int, seed: int,
                 name: str) -> tuple[set[int], set[int]]:
    """Randomly split the given person ids into disjoint train and test sets (seeded, reproducible)."""
    people = np.array(sorted(set(pids)), np.int64)
    if num_train < 1 or num_test < 1 or len(people) < num_train + num_test:
        raise DataError(f"{name}: too few people for the split: {len(people)} eligible, asked for "
                        f"{num_train} train + {num_test} test; lower them with --data-option "
                        "num_train=N / num_test=N or check the data set is complete")
    order = np.random.default_rng(seed).permutation(people)
    return set(order[:num_train].tolist()), set(order[num_train:num_train + num_test].tolist())


def load_records(name: str, protocol: str, parts: dict[str, list[Record]], height: int,
                 width: int, progress: bool | None = None) -> ReidSet:
    """Decode every part's files in one pass (one progress bar, one skip warning) into a ReidSet;
    ``progress`` as ``engine.images.load_images`` takes it (False: no bar)."""
    records = [r for part in PARTS for r in parts[part]]
    images, kept = load_images([r.path for r in records], height, width, on_error="skip", progress=progress)
    kept_arr = np.asarray(kept, np.int64)
    out, start = {}, 0
    for part in PARTS:
        stop = start + len(parts[part])
        sel = (kept_arr >= start) & (kept_arr < stop)
        rows = kept_arr[sel]
        out[part] = (images[sel], [records[i].pid for i in rows], [records[i].cam for i in rows])
        if not sel.any():
            raise DataError(f"{name}: no readable {part} images ({stop - start} listed); check the "
                            "files are not corrupt")
        start = stop
    return make_reid_set(name, protocol, out, skipped=len(records) - len(kept))

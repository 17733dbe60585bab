"""Shared by the sharded gallery tests (engine and serve): small rows, the reference Gallery, a local Ray."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _local_ray import start_local_ray

from engine.gallery import Gallery
from engine.sharded import Manifest, ShardedGallery, ShardOptions

ROOT = Path(__file__).resolve().parents[2]
DIM, SHARDS = 16, 3
OPTIONS = ShardOptions(cpus=0)  # 3 shards (and a reloaded copy) on a 2-CPU cluster


def local_ray() -> Iterator[None]:
    """A local 2-CPU cluster whose workers import this checkout and this folder's fault module."""
    import ray

    start_local_ray(2, ROOT, Path(__file__).parent)
    yield
    ray.shutdown()


def rows(n: int = 400, seed: int = 0, dim: int = DIM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings with several rows per id (ids 0..119) and cameras; rows 0..5 are one vector under
    several ids on every shard, so the distance ties are broken by id across shards."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb[1:6] = emb[0]
    return emb, rng.integers(0, 120, n).astype(np.int64), rng.integers(1, 4, n).astype(np.int64)


def in_process(*parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Gallery:
    gallery = Gallery(parts[0][0].shape[1])
    for emb, ids, cams in parts:
        gallery.add(emb, ids, cams)
    return gallery


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def load_copy(path: Path, folder: Path) -> ShardedGallery:
    """The gallery as its files on disk hold it: the manifest and its shard files copied to ``folder`` and
    loaded there (another manifest path, so new actors; ``load(path)`` would attach to the running ones)."""
    folder.mkdir(exist_ok=True)
    shutil.copy(path, folder / path.name)
    for entry in Manifest.read(path).shards:
        if entry.file:
            shutil.copy(path.parent / entry.file, folder / entry.file)
    return ShardedGallery.load(folder / path.name, options=OPTIONS)

"""Tiny models and images shared by the train tests (build in milliseconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import JLMLConfig

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)


ABLATIONS = [dict(), dict(branches="global"), dict(branches="local"), dict(loss="single"),
             dict(shared_layers=False), dict(branches="local", loss="single"), dict(sparsity=False)]


@pytest.fixture
def tiny_cfg() -> JLMLConfig:
    return JLMLConfig(**TINY)


@pytest.fixture(params=ABLATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def ablation_cfg(request: pytest.FixtureRequest, tiny_cfg: JLMLConfig) -> JLMLConfig:
    """The tiny config under each ablation switch."""
    return tiny_cfg.replace(**request.param)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (6, 32, 16, 3), dtype=np.uint8))


class StandInSet:
    """A few identities, each a fixed colour layout plus noise; stands in for train.data's ReidSet."""

    def __init__(self, ids: int = 4, per_id: int = 4, height: int = 32, width: int = 16) -> None:
        rng = np.random.default_rng(0)
        looks = rng.integers(0, 256, (ids, 4, 1, 3))  # one colour per stripe and id

        def part(n: int, cam: int):
            pids = np.repeat(np.arange(ids), n)
            base = np.repeat(looks[pids], height // 4, axis=1).repeat(width, axis=2)
            noise = rng.integers(-30, 31, base.shape)
            images = np.clip(base + noise, 0, 255).astype(np.uint8)
            return images, pids.astype(np.int64), np.full(len(pids), cam, np.int64)

        self.train_images, self.train_pids, self.train_cams = part(per_id, 0)
        self.query_images, self.query_pids, self.query_cams = part(1, 0)
        self.gallery_images, self.gallery_pids, self.gallery_cams = part(1, 1)
        self.protocol = "single_shot"
        self.num_classes = ids


@pytest.fixture
def stand_in() -> StandInSet:
    return StandInSet()


@pytest.fixture
def stand_in_loader(monkeypatch: pytest.MonkeyPatch):
    """``stand_in_loader(name, options, **synthetic)`` makes ``train.data.load_reid_set(name, ...)``
    load another synthetic population (``synthetic``: its loader options) after checking it was asked
    with ``options``; other names load as ever. Returns the patched loader."""
    import train.data

    real_load = train.data.load_reid_set

    def patch(name: str, options: dict, **synthetic):
        def load(asked, root=None, **kwargs):
            if asked != name:
                return real_load(asked, root, **kwargs)
            assert {k: kwargs.pop(k) for k in options} == options
            return real_load("synthetic", **synthetic, **kwargs)

        monkeypatch.setattr(train.data, "load_reid_set", load)
        return load

    return patch

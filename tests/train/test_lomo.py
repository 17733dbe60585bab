"""The PyTorch LOMO equals a plain numpy one written from the paper, on real person crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _lomo_reference import lomo as reference_lomo

from engine.errors import DataError, InputError
from train.lomo import LOMO, LOMOConfig, descriptor_dim, part_dims


def person_crops(height: int, width: int, n: int = 6) -> np.ndarray:
    """VIPeR crops when ../shared/data has them (the real case), else the project's synthetic people."""
    from train.data.datasets import load_reid_set

    try:
        data = load_reid_set("viper", height=height, width=width, progress=False)
    except DataError:
        data = load_reid_set("synthetic", height=height, width=width, num_ids=12, num_test=4)
    return np.ascontiguousarray(data.gallery_images[:n])


@pytest.mark.parametrize(("size", "retinex"), [((128, 48), True), ((128, 64), True), ((128, 48), False)])
def test_descriptor_equals_numpy_reference(size, retinex):
    images = person_crops(*size)
    with torch.no_grad():
        got = LOMO(LOMOConfig(retinex=retinex), *size)(torch.from_numpy(images)).double().numpy()
    want = np.stack([reference_lomo(image, retinex=retinex) for image in images])
    assert got.shape == want.shape == (len(images), 26960)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99999
    # Counts are exact integers and ties on bin edges are decided exactly in both: the same bins.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_layout_is_the_papers():
    cfg = LOMOConfig()
    # 24 + 11 + 5 strips at 128 px high: 40 x 512 HSV bins and 40 x 81 SILTP codes per radius.
    assert part_dims(cfg, 128, 48) == [40 * 512, 40 * 81, 40 * 81]
    assert descriptor_dim(cfg, 160, 64) == (31 + 15 + 7) * (512 + 2 * 81)
    # At 128 x 20 the second level is 64 x 10: one window wide, too narrow for R = 5 (11 px), and the
    # third (32 x 5) holds no window.
    assert part_dims(cfg, 128, 20) == [(24 + 11) * 512, (24 + 11) * 81, 24 * 81]


def test_parts_are_unit_vectors_of_log_counts():
    images = torch.from_numpy(person_crops(128, 48, n=3))
    with torch.no_grad():
        out = LOMO(LOMOConfig(), 128, 48)(images)
    bounds = np.cumsum([0, *part_dims(LOMOConfig(), 128, 48)])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        assert torch.allclose(out[:, lo:hi].norm(dim=1), torch.ones(3), atol=1e-5)
    assert (out >= 0).all()


def test_half_model_keeps_the_descriptor_in_float32():
    images = torch.from_numpy(person_crops(128, 48, n=2))
    module = LOMO(LOMOConfig(), 128, 48)
    with torch.no_grad():
        full = module(images)
        half = module.half()(images)
    assert half.dtype == torch.float32
    # Only the Retinex blur matrices are stored in FP16; a pixel near a bin edge may move, no more.
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.999


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="multiple of step"):
        LOMOConfig(block=10, step=4)
    with pytest.raises(InputError, match="at least 10x10"):
        LOMO(LOMOConfig(), 8, 48)

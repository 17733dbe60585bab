"""GOG (train.gog) against a numpy reference written from the paper, its matrix-product logarithm against an
eigendecomposition, the GOG + LOMO descriptor's block normalisation, and the gog_xqda matcher end to end:
fitted by ``python -m train``, exported to ONNX with parity, served by ONNX Runtime."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _gog_reference import gog as reference_gog

from train.descriptor import HandCrafted
from train.gog import GOG, SPACES, GOGConfig, gog, spd_log
from train.lomo import LOMOConfig


def _spd(n: int, count: int, condition: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(count, n, n, generator=g, dtype=torch.float64))
    values = torch.logspace(0, -math.log10(condition), n, dtype=torch.float64) * 3
    return (q * values) @ q.transpose(-1, -2)


@pytest.mark.parametrize("n,condition,tolerance", [(9, 1e3, 1e-4), (9, 1e5, 1e-3), (9, 1e6, 3e-3), (46, 1e4, 1e-3),
                                                   (46, 1e6, 1e-3)])
def test_matrix_log_by_products_equals_the_eigendecomposition(n, condition, tolerance):
    a = _spd(n, 50, condition)
    values, vectors = torch.linalg.eigh(a)
    want = (vectors * torch.log(values)[..., None, :]) @ vectors.transpose(-1, -2)
    got = spd_log(a.float(), n).double()
    assert ((got - want).abs().amax((-1, -2)) / want.abs().amax((-1, -2))).max() < tolerance


@pytest.mark.parametrize("space", SPACES)
def test_gog_equals_the_paper_written_patch_by_patch(space):
    rng = np.random.default_rng(1)
    # smooth colour blobs plus noise: flat and busy patches, every channel of every space in use
    base = rng.integers(0, 256, (4, 2, 3)).repeat(8, 0).repeat(8, 1)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    want = reference_gog(image, space)
    got = gog(torch.from_numpy(image[None]), space)[0].double().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()
    cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
    assert cosine > 0.99999


def test_the_module_concatenates_one_block_per_space_at_its_input_size():
    module = GOG(GOGConfig(spaces=("rgb", "nrng")), 32, 16)
    images = torch.randint(0, 256, (3, 32, 16, 3), dtype=torch.uint8)
    out = module(images)
    assert out.shape == (3, module.dim) and module.blocks == [7 * 1081, 7 * 703]
    assert torch.allclose(out[:, :7 * 1081], gog(images, "rgb"), atol=1e-5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_unknown_spaces_are_refused():
    with pytest.raises(Exception, match="expected a non-empty subset"):
        GOGConfig(spaces=("cmyk",))


def test_gog_plus_lomo_blocks_are_centred_on_the_training_mean_and_unit_length():
    hand = HandCrafted("gog+lomo", LOMOConfig(), GOGConfig(spaces=("rgb",)), 32, 16)
    images = torch.randint(0, 256, (6, 32, 16, 3), dtype=torch.uint8)
    raw = hand.raw(images).double().numpy()
    hand.fit_means(raw)
    out = hand(images).double().numpy()
    assert np.allclose(out, hand.normalise_np(raw), atol=1e-5)
    for block in np.split(out, np.cumsum(hand.blocks)[:-1], axis=1):
        assert np.allclose(np.linalg.norm(block, axis=1), 1.0, atol=1e-5)
    centred = np.split(raw - raw.mean(0), np.cumsum(hand.blocks)[:-1], axis=1)[0]
    assert np.allclose(out[:, :hand.blocks[0]], centred / np.linalg.norm(centred, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.slow
def test_gog_xqda_is_fitted_exported_with_parity_and_served(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from engine import Embedder
    from export import build_engine
    from train.__main__ import main
    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_reid_set

    out = tmp_path / "run"
    assert main(["--recipe", "smoke", "--matcher", "gog_xqda", "--out", str(out), "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    described = ckpt.spec.extra["matcher"]
    assert ckpt.model.kind == "gog_xqda" and described["descriptor"] == "gog+lomo"
    assert described["parts"] == {"gog_xqda": ckpt.spec.embedding_dim}
    assert ckpt.model.descriptor.means.abs().sum() > 0  # fitted, not the zeros it starts with
    result = build_engine.build(out / "last.pt", tmp_path / "artefact",
                                build_engine.BuildOptions(max_batch=8, opt_batch=4))
    assert all(p.passed for p in result.parity)
    assert "GOG + LOMO + XQDA" in (tmp_path / "artefact" / "MODEL_CARD.md").read_text()
    images = load_reid_set("synthetic", height=32, width=16, num_ids=12, num_test=4).query_images
    with torch.no_grad():
        want = ckpt.model(torch.from_numpy(images)).numpy()
    for precision, floor in (("fp32", 0.9999), ("fp16", 0.999)):
        with Embedder(tmp_path / "artefact", backend="ort", device="cpu", precision=precision) as embed:
            got = embed(images)
        assert (got * want).sum(1).min() >= floor

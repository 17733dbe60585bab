"""The hybrid matcher: its embedding formula, its fitting on held-out training people, its checkpoint
and its export (one ONNX graph with parity, served through Embedder)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, InputError
from train.checkpoint import load_checkpoint, save_checkpoint, save_matcher
from train.data.datasets import load_reid_set
from train.fusion import SHARES, fit_matcher, holdout_split, lomo_descriptors
from train.hybrid import HybridMatcher
from train.lomo import LOMO, LOMOConfig
from train.model import JLML, config_spec
from train.xqda import fit_xqda


@pytest.fixture(scope="module")
def people():
    """A synthetic re-id split at the tiny model's size (32 x 16): 16 train, 6 test people, 3 cameras."""
    return load_reid_set("synthetic", height=32, width=16, num_ids=22, num_test=6, cams=3)


def tiny_jlml(tiny_cfg, classes: int) -> JLML:
    torch.manual_seed(0)
    return JLML(tiny_cfg, classes).eval()


def test_embedding_is_the_weighted_normalised_concatenation(tiny_cfg, people):
    jlml, lomo = tiny_jlml(tiny_cfg, people.num_classes), LOMO(LOMOConfig(), 32, 16)
    metric = fit_xqda(lomo_descriptors(lomo, people.train_images), people.train_pids, people.train_cams)
    matcher = HybridMatcher(jlml, LOMOConfig(), config_spec(tiny_cfg), metric, (0.7, 2.5)).eval()
    images = people.query_images[:5]
    with torch.no_grad():
        got = matcher(torch.from_numpy(images)).numpy()
        u = jlml(torch.from_numpy(images)).numpy()
    z = metric.embed(lomo_descriptors(lomo, images))
    want = np.concatenate([0.7 * u, 2.5 * z], axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert matcher.spec.embedding_dim == got.shape[1] == tiny_cfg.embedding_dim + metric.dims
    assert matcher.spec.extra["matcher"]["parts"] == {"jlml": tiny_cfg.embedding_dim, "lomo_xqda": metric.dims}


def test_weights_must_match_the_parts(tiny_cfg, people):
    lomo = LOMO(LOMOConfig(), 32, 16)
    metric = fit_xqda(lomo_descriptors(lomo, people.train_images), people.train_pids, people.train_cams)
    with pytest.raises(InputError, match="a > 0 exactly when"):
        HybridMatcher(None, LOMOConfig(), config_spec(tiny_cfg), metric, (1.0, 1.0))
    with pytest.raises(InputError, match="fit it on this input size"):
        HybridMatcher(None, LOMOConfig(), config_spec(tiny_cfg).replace(height=64), metric, (0.0, 1.0))


def test_holdout_people_never_train(people):
    fold = holdout_split(people, seed=3)
    held = set(fold.query_pids) | set(fold.gallery_pids)
    assert len(np.unique(fold.query_pids)) == round(people.num_classes / 3)
    assert not held & set(np.unique(people.train_pids[~np.isin(people.train_pids, list(held))]))
    assert len(fold.train_pids) + len(fold.query_pids) + len(fold.gallery_pids) == len(people.train_pids)
    # each held-out person: queries from one camera, gallery from the others
    for person in held:
        assert not set(fold.query_cams[fold.query_pids == person]) & set(fold.gallery_cams[fold.gallery_pids == person])


def test_fused_fit_trains_jlml_on_the_kept_people_only(tiny_cfg, people):
    seen = {}

    def train_jlml(train_set):
        seen["train"], seen["query"] = train_set.train_images, train_set.query_images
        return tiny_jlml(tiny_cfg, train_set.num_classes)

    matcher, report = fit_matcher("fused", people, config_spec(tiny_cfg), LOMOConfig(), train_jlml, seed=1)
    test_pixels = {people.query_images[i].tobytes() for i in range(len(people.query_images))}
    assert not {img.tobytes() for img in seen["train"]} & test_pixels
    assert len(seen["train"]) < len(people.train_images)
    assert set(report.scores) == {str(s) for s in SHARES} and report.held_out_ids >= 2
    best = max(SHARES[1:], key=lambda s: (report.scores[str(s)]["rank1"], report.scores[str(s)]["mAP"], -s))
    assert report.share == best
    assert matcher.kind == ("lomo_xqda" if math.isinf(best) else "fused")


def test_mirror_metric_learns_from_the_mirror_images_too(tiny_cfg, people):
    matcher, _ = fit_matcher("lomo_xqda", people, config_spec(tiny_cfg), LOMOConfig(), mirror=True)
    lomo = LOMO(LOMOConfig(), 32, 16)
    flipped = np.ascontiguousarray(people.train_images[:, :, ::-1])
    both = np.concatenate([lomo_descriptors(lomo, people.train_images), lomo_descriptors(lomo, flipped)])
    want = fit_xqda(both, np.tile(people.train_pids, 2), np.tile(people.train_cams, 2))
    np.testing.assert_allclose(matcher.projection.double().numpy(), want.projection, rtol=1e-4, atol=1e-6)
    plain, _ = fit_matcher("lomo_xqda", people, config_spec(tiny_cfg), LOMOConfig())
    assert plain.projection.shape != matcher.projection.shape or not torch.allclose(plain.projection,
                                                                                    matcher.projection)


@pytest.mark.parametrize("kind", ["fused", "lomo_xqda"])
def test_checkpoint_round_trip_serves_the_same_embedding(tmp_path, tiny_cfg, people, kind):
    jlml = tiny_jlml(tiny_cfg, people.num_classes)
    path = tmp_path / "last.pt"
    if kind == "fused":
        save_checkpoint(path, jlml, tiny_cfg, epoch=1, num_classes=people.num_classes, extra={"data": "x"})
    lomo = LOMO(LOMOConfig(), 32, 16)
    metric = fit_xqda(lomo_descriptors(lomo, people.train_images), people.train_pids, people.train_cams)
    matcher = HybridMatcher(jlml if kind == "fused" else None, LOMOConfig(), config_spec(tiny_cfg), metric,
                            (1.0, 0.5) if kind == "fused" else (0.0, 0.5)).eval()
    save_matcher(path, matcher, tiny_cfg, extra={"fusion": {"share": 0.5}})
    ckpt = load_checkpoint(path)
    images = torch.from_numpy(people.gallery_images)
    with torch.no_grad():
        assert torch.equal(ckpt.model(images), matcher(images))
    assert ckpt.spec == matcher.spec and ckpt.extra["fusion"] == {"share": 0.5}
    if kind == "fused":
        assert ckpt.extra["data"] == "x" and ckpt.trained_network() is ckpt.network
    else:
        with pytest.raises(CheckpointError, match="no JLML network"):
            ckpt.trained_network()


def test_fused_artefact_exports_with_parity_and_serves(tmp_path, tiny_cfg, people):
    pytest.importorskip("onnxruntime")
    from engine import Embedder
    from export import build_engine

    jlml = tiny_jlml(tiny_cfg, people.num_classes)
    path = save_checkpoint(tmp_path / "last.pt", jlml, tiny_cfg, epoch=1, num_classes=people.num_classes)
    lomo = LOMO(LOMOConfig(), 32, 16)
    metric = fit_xqda(lomo_descriptors(lomo, people.train_images), people.train_pids, people.train_cams)
    matcher = HybridMatcher(jlml, LOMOConfig(), config_spec(tiny_cfg), metric, (1.0, 0.8)).eval()
    save_matcher(path, matcher, tiny_cfg)
    out = tmp_path / "artefact"
    result = build_engine.build(path, out, build_engine.BuildOptions(max_batch=16, opt_batch=8))
    assert result.spec.embedding_dim == matcher.spec.embedding_dim
    assert result.spec.extra["matcher"]["kind"] == "fused"
    assert all(p.passed for p in result.parity)
    card = (out / "MODEL_CARD.md").read_text()
    assert "fused with LOMO + XQDA" in card and f"lomo_xqda {metric.dims}-D" in card
    from PIL import Image

    from export.int8 import MIN_CALIB_FILES

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(MIN_CALIB_FILES):  # enough crops: the refusal is the matcher's, not the folder's
        Image.fromarray(people.query_images[i % len(people.query_images)]).save(calib / f"{i:03d}.png")
    with pytest.raises(InputError, match="--int8 covers JLML-only checkpoints"):
        build_engine.build(path, tmp_path / "int8", build_engine.BuildOptions(int8=True, calib_data=calib))
    images = people.query_images
    for precision, floor in (("fp32", 0.99999), ("fp16", 0.999)):
        with Embedder(out, backend="ort", device="cpu", precision=precision) as embed:
            got = embed(images)
        with torch.no_grad():
            want = matcher(torch.from_numpy(images)).numpy()
        assert ((got * want).sum(1)).min() >= floor


def test_train_cli_matcher_lomo_xqda_writes_a_served_matcher(tmp_path, capsys):
    from train.__main__ import main

    out = tmp_path / "run"
    assert main(["--recipe", "smoke", "--matcher", "lomo_xqda", "--out", str(out), "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.network is None and ckpt.model.kind == "lomo_xqda"
    assert ckpt.spec.extra["matcher"]["parts"] == {"lomo_xqda": ckpt.spec.embedding_dim}
    assert ckpt.extra["data"]["dataset"] == "synthetic" and ckpt.extra["fusion"]["kind"] == "lomo_xqda"
    assert "lomo_xqda: XQDA" in capsys.readouterr().out
    assert (out / "metrics.json").is_file()

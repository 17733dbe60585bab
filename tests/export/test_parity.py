"""Parity figures: cosine, max diff and tie-aware top-k agreement, measured on the tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError, ParityError
from export.parity import (
    COSINE_THRESHOLDS,
    check_parity,
    compare,
    measure_parity,
    sample_images,
    topk_agreement,
    write_parity,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_identical_embeddings_agree_fully():
    emb = _unit(np.random.default_rng(0).normal(size=(10, 8)))
    result = compare("fp32", emb, emb.copy(), threshold=0.99999, k=3)
    assert result.min_cosine == pytest.approx(1.0) and result.max_abs_diff == 0.0
    assert result.topk_agreement == 1.0 and result.passed


def test_swapping_tied_neighbours_is_not_a_disagreement():
    # Rows 1 and 2 are equally close to row 0; a test that ranks them the other way still agrees.
    ref = _unit(np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.8, 0.0, 0.6], [-1.0, 0.0, 0.0]]))
    test = ref.copy()
    test[2] = _unit(np.array([[0.81, 0.0, 0.59]]))[0]  # row 2 now slightly closer to row 0 than row 1
    assert topk_agreement(ref, test, k=1, tie_tol=1e-6) == 1.0


def test_a_wrong_neighbour_lowers_agreement():
    # Three pairs of points 10 degrees apart; the point at 90 degrees jumps to 5 degrees in the test.
    angles = np.deg2rad([0, 10, 90, 100, 180, 190])
    ref = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    test = ref.copy()
    test[2] = [np.cos(np.deg2rad(5)), np.sin(np.deg2rad(5))]
    # Rows 0, 1 (new neighbour), 2 (moved) and 3 (lost its neighbour) disagree; the 180/190 pair agrees.
    assert topk_agreement(ref, test, k=1) == pytest.approx(2 / 6)


def test_topk_needs_two_rows():
    with pytest.raises(InputError):
        topk_agreement(np.ones((1, 4)), np.ones((1, 4)), k=1)


def test_measured_on_the_tiny_model(tiny_model, fp32_onnx, fp16_onnx, tiny_spec, random_images):
    results = {r.graph: r for r in measure_parity(tiny_model, {"fp32": fp32_onnx, "fp16": fp16_onnx},
                                                  random_images(32, tiny_spec, seed=5))}
    assert results["fp32"].min_cosine >= COSINE_THRESHOLDS["fp32"]
    assert results["fp16"].min_cosine >= COSINE_THRESHOLDS["fp16"]
    assert results["fp32"].max_abs_diff < 1e-4 and results["fp16"].max_abs_diff < 1e-1
    assert results["fp32"].topk_agreement >= 0.95 and results["fp16"].topk_agreement >= 0.8
    check_parity(list(results.values()))


def test_below_threshold_raises_naming_the_graph(tmp_path):
    ref = _unit(np.random.default_rng(1).normal(size=(6, 4)))
    bad = compare("fp16", ref, _unit(ref + 0.3), threshold=0.999)
    assert not bad.passed
    with pytest.raises(ParityError, match="fp16: min cosine"):
        check_parity([bad])
    write_parity(tmp_path / "parity.json", [bad], {"images": "random"})
    saved = json.loads((tmp_path / "parity.json").read_text())
    assert saved["graphs"]["fp16"]["passed"] is False
    assert saved["graphs"]["fp16"]["min_cosine"] == pytest.approx(bad.min_cosine)


def test_sample_images_are_resized_to_the_spec(tmp_path, tiny_spec):
    for i, size in enumerate([(48, 128), (64, 128), (20, 30)]):
        Image.new("RGB", size, (i * 40, 10, 200)).save(tmp_path / f"{i}.png")
    images = sample_images(tiny_spec, tmp_path)
    assert images.shape == (3, *tiny_spec.image_shape) and images.dtype == np.uint8
    assert images[1, 0, 0, 0] == 40


def test_sample_images_folder_without_images_is_an_input_error(tmp_path, tiny_spec):
    with pytest.raises(InputError, match="holds 0 images"):
        sample_images(tiny_spec, tmp_path)

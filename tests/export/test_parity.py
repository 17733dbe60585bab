"""Export parity: measured through the engine (Embedder) on a staged artefact, gating, parity.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError, ParityError
from engine.parity import compare
from engine.spec import SPEC_FILE, file_sha256
from export.parity import (
    COSINE_THRESHOLDS,
    check_parity,
    measure_parity,
    reference_embeddings,
    sample_images,
    write_parity,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def staged(tmp_path_factory, fp32_onnx, fp16_onnx, tiny_spec):
    """A staged artefact folder: both graphs and a spec fingerprinting them."""
    folder = tmp_path_factory.mktemp("staged")
    for name, source in (("model.onnx", fp32_onnx), ("model.fp16.onnx", fp16_onnx)):
        (folder / name).write_bytes(source.read_bytes())
    tiny_spec.replace(onnx_sha256=file_sha256(folder / "model.onnx"),
                      onnx_fp16_sha256=file_sha256(folder / "model.fp16.onnx")).save(folder / SPEC_FILE)
    return folder


def test_measured_through_the_engine_on_the_tiny_model(tiny_model, staged, tiny_spec, random_images):
    images = random_images(32, tiny_spec, seed=5)
    targets = {"fp32": ("ort", "fp32"), "fp16": ("ort", "fp16")}
    results = {r.graph: r for r in measure_parity(reference_embeddings(tiny_model, images), staged, targets, images)}
    assert results["fp32"].min_cosine >= COSINE_THRESHOLDS["fp32"]
    assert results["fp16"].min_cosine >= COSINE_THRESHOLDS["fp16"]
    assert results["fp32"].max_abs_diff < 1e-4 and results["fp16"].max_abs_diff < 1e-1
    assert results["fp32"].topk_agreement >= 0.95 and results["fp16"].topk_agreement >= 0.8
    check_parity(list(results.values()))


def test_a_replaced_graph_in_the_stage_is_refused(tiny_model, staged, tiny_spec, random_images, tmp_path):
    """Measured on the served path: the engine's fingerprint check applies to parity too."""
    import shutil

    folder = tmp_path / "stage"
    shutil.copytree(staged, folder)
    (folder / "model.fp16.onnx").write_bytes((folder / "model.onnx").read_bytes())
    images = random_images(4, tiny_spec)
    with pytest.raises(Exception, match="onnx_fp16_sha256"):
        measure_parity(reference_embeddings(tiny_model, images), folder, {"fp16": ("ort", "fp16")}, images)


def test_unknown_precision_has_no_threshold(staged, tiny_spec, random_images):
    with pytest.raises(InputError, match="no parity threshold for precisions"):
        measure_parity(np.zeros((2, 16)), staged, {"x": ("ort", "int8")}, random_images(2, tiny_spec))


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

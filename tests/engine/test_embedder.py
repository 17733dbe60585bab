"""Embedder: batching of any N, backend choice, and the errors a user meets first."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import engine.backends.trt as trt_backend
from engine.embedder import Embedder
from engine.errors import ArtifactError, InputError, SpecMismatchError
from engine.spec import PLAN_FILE

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ort_embedder(artifact_dir):
    with Embedder(artifact_dir, backend="ort", device="cpu") as emb:
        yield emb


def test_zero_and_single_images(ort_embedder, spec, make_images):
    empty = ort_embedder(np.zeros((0, *spec.image_shape), np.uint8))
    assert empty.shape == (0, spec.embedding_dim) and empty.dtype == np.float32
    image = make_images(1)[0]
    np.testing.assert_allclose(ort_embedder(image), ort_embedder(image[None]), atol=1e-6)


def test_batch_size_does_not_change_the_answer(artifact_dir, ort_embedder, make_images):
    images = make_images(23, seed=3)
    with Embedder(artifact_dir, backend="ort", device="cpu", batch_size=5) as small:
        assert small.batch_size == 5
        np.testing.assert_allclose(small(images), ort_embedder(images), atol=1e-5)



def test_batches_go_through_run_batches(artifact_dir, make_images, reference, monkeypatch):
    """The Embedder hands the backend all its batches at once, so TensorRT can pipeline them."""
    images, seen = make_images(12, seed=8), []
    with Embedder(artifact_dir, backend="ort", device="cpu", batch_size=5) as emb:
        run_batches = emb._backend.run_batches

        def spy(batches):
            batches = list(batches)
            seen.extend(len(batch) for batch in batches)
            return run_batches(batches)
        monkeypatch.setattr(emb._backend, "run_batches", spy)
        np.testing.assert_allclose(emb(images), reference(images), atol=1e-5)
    assert seen == [5, 5, 2]


def test_run_batches_checks_every_batch(ort_embedder, make_images):
    backend = ort_embedder._backend
    outputs = backend.run_batches([make_images(2), make_images(65)])
    np.testing.assert_array_equal(next(outputs), backend(make_images(2)))
    with pytest.raises(InputError, match="1 to 64 images per call, got 65"):
        next(outputs)

@pytest.mark.parametrize("batch_size", [0, 65])
def test_batch_size_outside_the_backend_range(artifact_dir, batch_size):
    with pytest.raises(InputError, match=r"batch_size .* outside 1\.\.64"):
        Embedder(artifact_dir, backend="ort", batch_size=batch_size)


@pytest.mark.parametrize(("images", "shown"), [
    (np.zeros((2, 32, 16, 3), np.float32), "float32 (2, 32, 16, 3)"),
    (np.zeros((2, 3, 32, 16), np.uint8), "uint8 (2, 3, 32, 16)"),
    (np.zeros((2, 64, 32, 3), np.uint8), "uint8 (2, 64, 32, 3)"),
])
def test_wrong_images_say_what_was_expected(ort_embedder, images, shown):
    with pytest.raises(InputError, match=r"expected uint8 images of shape \(N, 32, 16, 3\)") as info:
        ort_embedder(images)
    assert shown in str(info.value) and "preprocessing happens inside" in str(info.value)


def test_unknown_backend_and_missing_folder(artifact_dir, tmp_path):
    with pytest.raises(InputError, match="unknown backend 'onnx'.*'ort'"):
        Embedder(artifact_dir, backend="onnx")
    with pytest.raises(ArtifactError, match="does not exist"):
        Embedder(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="no spec"):
        Embedder(tmp_path)


def test_module_goes_with_the_torch_backend_only(artifact_dir, tiny_module):
    with pytest.raises(InputError, match="module= is missing"):
        Embedder(artifact_dir, backend="torch")
    with pytest.raises(InputError, match="module= is given"):
        Embedder(artifact_dir, backend="ort", module=tiny_module)
    with pytest.raises(InputError, match="compile=True applies to backend='torch' only"):
        Embedder(artifact_dir, backend="ort", compile=True)


def test_from_module_without_an_artefact(tiny_module, spec, make_images, reference):
    images = make_images(9)
    with Embedder.from_module(tiny_module, spec, device="cpu", batch_size=4) as emb:
        assert emb.backend_name == "torch" and emb.precision == "fp32"
        np.testing.assert_allclose(emb(images), reference(images), atol=1e-6)


def test_a_spec_that_differs_from_the_folder_is_refused(artifact_dir, tiny_module, spec):
    with pytest.raises(SpecMismatchError, match="embedding_dim"):
        Embedder(artifact_dir, backend="torch", module=tiny_module, spec=spec.replace(embedding_dim=8))


def test_closed_embedder_refuses_work(artifact_dir, make_images):
    with Embedder(artifact_dir, backend="ort", device="cpu") as emb:
        pass
    with pytest.raises(InputError, match="closed"):
        emb(make_images(1))


def _folder_with_plan(artifact_dir, tmp_path):
    folder = tmp_path / "artefact"
    shutil.copytree(artifact_dir, folder)
    (folder / PLAN_FILE).write_bytes(b"not a real plan")
    return folder


def test_auto_uses_onnx_runtime_without_tensorrt(artifact_dir, tmp_path, caplog):
    for folder in (artifact_dir, _folder_with_plan(artifact_dir, tmp_path)):
        with Embedder(folder) as emb:
            assert emb.backend_name == "ort"
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # one line for the plan
    assert "with ort fp32 on cpu: model.plan cannot serve here: the 'trt' backend needs tensorrt" in line


def test_auto_prefers_tensorrt_when_the_plan_fits(artifact_dir, tmp_path, monkeypatch):
    opened, asked = [], []

    class FakeTrt:  # stands in for TrtBackend: only the choice made by "auto" is under test
        name, max_batch, device = "trt", 8, "cuda:0"

        def __init__(self, folder, spec, *, device, precision):
            self.precision = precision
            opened.append((folder, device, precision))

        def close(self):
            pass

    def fits(folder, spec, *, device, precision):
        asked.append((device, precision))
        return None

    monkeypatch.setattr(trt_backend, "unfit_reason", fits)
    monkeypatch.setattr(trt_backend, "TrtBackend", FakeTrt)
    folder = _folder_with_plan(artifact_dir, tmp_path)
    with Embedder(folder, precision="fp16") as emb:
        assert emb.backend_name == "trt" and emb.batch_size == 8
    assert opened == [(folder, "auto", "fp16")] and asked == [("auto", "fp16")]
    with Embedder(folder, device="cpu") as emb:  # TensorRT never serves device='cpu'
        assert emb.backend_name == "ort"


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_module, spec, make_images, reference):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = make_images(16, seed=7)
    with Embedder.from_module(tiny_module, spec, device=device, compile=True) as emb:
        np.testing.assert_allclose(emb(images), reference(images), atol=1e-5)


@pytest.mark.parametrize("batch_size", [2.5, "8", True])
def test_batch_size_that_is_not_a_whole_number(artifact_dir, batch_size):
    with pytest.raises(InputError, match=f"batch_size must be a whole number of images, got {batch_size!r}"):
        Embedder(artifact_dir, backend="ort", batch_size=batch_size)


def test_a_spec_whose_input_size_disagrees_with_the_graph_fails_at_open(artifact_dir, tmp_path, spec):
    folder = tmp_path / "artefact"
    shutil.copytree(artifact_dir, folder)
    spec.replace(height=64).save(folder / "spec.json")
    with pytest.raises(SpecMismatchError, match=r"takes \(N, 32, 16, 3\) images .* spec says \(N, 64, 16, 3\)"):
        Embedder(folder, backend="ort", device="cpu")


def test_a_model_file_instead_of_the_folder_says_to_pass_the_folder(artifact_dir):
    with pytest.raises(InputError, match=f"model.onnx is a file; pass the artefact folder that holds it \\({artifact_dir}\\)"):
        Embedder(artifact_dir / "model.onnx")


@pytest.mark.parametrize("spin_wait,entry", [(True, "1"), (False, "0")])
def test_spin_wait_reaches_the_onnx_runtime_session_and_keeps_the_answer(artifact_dir, make_images, reference,
                                                                          spin_wait, entry):
    images = make_images(3)
    with Embedder(artifact_dir, backend="ort", device="cpu", spin_wait=spin_wait) as embedder:
        options = embedder._backend._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
        np.testing.assert_allclose(embedder(images), reference(images), atol=1e-5)

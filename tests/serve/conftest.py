"""A tiny exported artefact, a gallery built from it in-process, and one real server per test module.

Every test here needs PyTriton and tritonclient; without them the whole folder skips with that reason.
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="the serve tests need nvidia-pytriton (pip install 'jlml-engine[serve]')")
pytest.importorskip("tritonclient.grpc", reason="the serve tests need tritonclient[grpc,http]")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from _serving import pixels, start_server, write_gallery  # noqa: E402

from engine import Embedder  # noqa: E402
from export.build_engine import main as build_engine  # noqa: E402
from serve.process import ServerProcess  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.config import JLMLConfig  # noqa: E402
from train.model import JLML  # noqa: E402

SMALL = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)
GALLERY_SIZE = 40


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artefact folder from the real export command (max batch 16), with its triton/ repository."""
    torch.manual_seed(1)
    model = JLML(JLMLConfig(**SMALL), num_classes=4).eval()
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve-ckpt") / "last.pt", model, model.cfg, epoch=1,
                           num_classes=4)
    out = tmp_path_factory.mktemp("serve-artefact")
    assert build_engine([str(ckpt), "--out", str(out), "--max-batch", "16", "--opt-batch", "4",
                         "--no-simplify"]) == 0
    return out


@pytest.fixture(scope="session")
def local_embedder(serve_artifact: Path) -> Iterator[Embedder]:
    with Embedder(serve_artifact, backend="ort", device="cpu") as embedder:
        yield embedder


@pytest.fixture(scope="session")
def gallery_images() -> np.ndarray:
    return pixels(GALLERY_SIZE, seed=5)


@pytest.fixture(scope="module")
def server(serve_artifact: Path, local_embedder: Embedder, gallery_images: np.ndarray,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module, with a gallery of GALLERY_SIZE images; stopping it is a test too:
    SIGINT must end it with exit code 0 and leave no process of its group (tritonserver, stubs)."""
    folder = tmp_path_factory.mktemp("served")
    running = start_server(serve_artifact, folder / "server.log",
                           write_gallery(folder / "gallery.npz", local_embedder, gallery_images))
    yield running
    assert running.stop(signal.SIGINT) == 0, running.log_tail()
    assert not running.group_alive(), "tritonserver or a model stub outlived the server"

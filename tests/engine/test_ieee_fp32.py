"""FP32 means IEEE FP32 where exactness or a reference rests on it (issue 21 #7): the gallery's provably
exact search and the torch backend's "fp32" run with TF32/bf16 off, whatever the caller set, and give
the caller's settings back. The switches are read inside the calls, so this runs on any machine."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.gallery import Gallery  # noqa: E402
from engine.search import gemm, twopass  # noqa: E402

B = torch.backends


def _matmul_state() -> tuple:
    return B.cuda.matmul.fp32_precision, B.mkldnn.matmul.fp32_precision


@pytest.fixture(params=["legacy-high", "legacy-medium", "new-tf32"])
def relaxed(request):
    """The caller's relaxed FP32 setting, as torch.compile's warning suggests or the new per-backend API;
    the process's defaults come back afterwards."""
    if request.param.startswith("legacy"):
        torch.set_float32_matmul_precision(request.param.split("-")[1])
    else:
        B.cuda.matmul.fp32_precision, B.mkldnn.matmul.fp32_precision = "tf32", "bf16"
    B.cudnn.allow_tf32 = True  # PyTorch's default
    before = _matmul_state()
    yield before
    for obj in (B.cuda.matmul, B.mkldnn.matmul):
        obj.fp32_precision = "none"
    torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("method", ["torch", "fp32", "fp16"])
def test_the_exact_search_runs_ieee_fp32_gemms_and_restores_the_callers_setting(relaxed, method, monkeypatch):
    seen = []
    real_search, real_batch = twopass.search, gemm.search_batch

    def recording(real):
        def call(*args, **kwargs):
            seen.append(_matmul_state())
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(twopass, "search", recording(real_search))
    monkeypatch.setattr(gemm, "search_batch", recording(real_batch))
    rng = np.random.default_rng(0)
    rows, queries = rng.standard_normal((500, 32), np.float32), rng.standard_normal((20, 32), np.float32)
    gal = Gallery(32, method=method, storage="float16" if method == "fp16" else "float32")
    gal.add(rows, np.arange(500))
    d, i = gal.search(queries, 5)
    assert seen and all(p in ("ieee", "none") and k in ("ieee", "none") for p, k in seen), seen
    assert _matmul_state() == relaxed  # the caller's setting is back
    exact = ((queries[:, None, :].astype(np.float64) - gal._store.rows("exact" if method == "fp16" else "emb")
              .double().numpy()[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(i, np.argsort(exact, axis=1, kind="stable")[:, :5])


def test_the_fp32_torch_reference_runs_no_tf32_convolutions(relaxed, tiny_module, spec, make_images):
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_module

        def forward(self, x):
            seen.append((B.cudnn.allow_tf32, *_matmul_state()))
            return self.inner(x)

    with TorchBackend(Recording(), spec, device="cpu") as backend:
        backend(make_images(2))
    assert seen == [(False, "ieee", "ieee")] or seen == [(False, "none", "none")], seen
    assert B.cudnn.allow_tf32 and _matmul_state() == relaxed

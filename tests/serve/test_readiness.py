"""Readiness means answering, and `python -m serve` serves the repository export wrote.

The server is started and only Triton's documented probe is polled (GET /v2/health/ready, as a
Kubernetes readiness probe would); the moment it says 200, every model is sent a request over HTTP and
gRPC, and none may fail. The same server shows what it loads: the artefact's triton/ folder, its
engine config for embed, and exactly the models that folder holds.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _serving import ATOL, pixels, write_gallery
from google.protobuf import text_format

from engine.client import MODELS, TritonClient
from serve.process import START_TIMEOUT_S, ServerProcess

pytestmark = pytest.mark.serve
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _probe_says_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def probed(serve_artifact, local_embedder, gallery_images, tmp_path_factory):
    """A server polled only through the documented probe, every 20 ms from the moment it starts."""
    folder = tmp_path_factory.mktemp("probed")
    gallery = write_gallery(folder / "gallery.npz", local_embedder, gallery_images)
    server = ServerProcess.launch(serve_artifact, folder / "server.log", gallery=gallery,
                                  extra=("--backend", "ort", "--device", "cpu"))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _probe_says_ready(server.http):
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log_tail()
        time.sleep(0.02)
    yield server
    assert server.stop() == 0, server.log_tail()


def test_nothing_fails_once_the_probe_says_ready(probed, local_embedder):
    images = pixels(3, seed=60)
    for url in (probed.http, probed.grpc):  # at once: no sleep between the probe's 200 and these
        with TritonClient(url) as client:
            np.testing.assert_allclose(client.embed(images), local_embedder(images), atol=ATOL)
            assert client.search(2, images=images)[1].shape == (3, 2)
            assert client.search(2, embeddings=local_embedder(images))[1].shape == (3, 2)
            assert client.add(images, ids=[700, 701, 702]) > 0
    with TritonClient(probed.http) as client:
        assert client.ready(MODELS)


def test_the_ready_line_names_the_probe(probed):
    deadline = time.monotonic() + 30
    while "ready:" not in probed.log_tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    (line,) = [x for x in probed.log_tail().splitlines() if x.startswith("ready:")]
    assert f"GET {probed.http}/v2/health/ready" in line and "/v2/models/NAME/ready" in line


def test_the_server_loads_the_artefacts_own_repository(probed, serve_artifact):
    args = probed.tritonserver()
    flags = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    assert Path(flags["--model-repository"]).resolve() == (serve_artifact / "triton").resolve()
    assert flags["--model-config-name"] == "engine"
    with TritonClient(probed.grpc) as client:
        index = client._client.get_model_repository_index(as_json=True)["models"]
        served = client._client.get_model_config("embed", as_json=True)["config"]
    on_disk = {p.name for p in (serve_artifact / "triton").iterdir() if (p / "config.pbtxt").is_file()}
    assert {m["name"] for m in index} == on_disk == set(MODELS)
    assert all(m["state"] == "READY" for m in index)
    exported = text_format.Parse((serve_artifact / "triton" / "embed" / "configs" / "engine.pbtxt").read_text(),
                                 model_config_pb2.ModelConfig())
    assert served["backend"] == exported.backend == "python"
    assert int(served["max_batch_size"]) == exported.max_batch_size
    assert [i["name"] for i in served["input"]] == [i.name for i in exported.input]

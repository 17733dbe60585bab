"""The real server against the in-process engine: embed, search, gallery_add, bad requests, a killed client.

One server serves the whole module (start-up is the slow part); tests that add to its gallery compare
against the gallery file as it is after the add, so their order does not matter.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _serving import ATOL, ROOT, pixels

from engine.client import EMBED_MODEL, EMBEDDINGS, IMAGES, ServerError, TritonClient
from engine.gallery import Gallery

pytestmark = pytest.mark.serve


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    with TritonClient(getattr(server, request.param)) as c:
        yield c


def test_embed_equals_in_process(client, local_embedder):
    images = pixels(37, seed=11)  # more than one request: the client splits at max batch 16
    got = client.embed(images)
    assert client.max_batch == local_embedder.spec.max_batch == 16
    assert got.shape == (37, local_embedder.spec.embedding_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, local_embedder(images), atol=ATOL)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_through_system_shared_memory_equal_in_process(server, local_embedder, protocol):
    """Triton's system shared-memory extension: the region grows from a 2-image to a 16-image request,
    and the answers are the engine's; closing the client unregisters and removes the region."""
    with TritonClient(getattr(server, protocol), shared_memory=True) as c:
        for n, seed in ((2, 16), (16, 17), (3, 18)):
            images = pixels(n, seed=seed)
            np.testing.assert_allclose(c.embed(images), local_embedder(images), atol=ATOL)
        assert c._shared is not None and c._shared.size == 16 * images[0].nbytes
        queries = pixels(4, seed=19)
        _, ids = c.search(3, images=queries)
        np.testing.assert_array_equal(ids, Gallery.load(server.gallery).search(local_embedder(queries), 3)[1])
        name = c._shared.name
        assert (Path("/dev/shm") / name).exists()
    assert not (Path("/dev/shm") / name).exists()
    with TritonClient(server.http) as plain:
        assert name not in {r["name"] for r in plain._client.get_system_shared_memory_status()}


def test_search_by_images_and_embeddings_equals_in_process(client, server, local_embedder):
    queries = pixels(6, seed=12)
    local = Gallery.load(server.gallery).search(local_embedder(queries), k=5)
    for dist, ids in (client.search(5, images=queries), client.search(5, embeddings=local_embedder(queries))):
        np.testing.assert_array_equal(ids, local[1])
        np.testing.assert_allclose(dist, local[0], atol=ATOL)


def test_k_above_gallery_is_padded(client, server):
    with np.load(server.gallery) as saved:
        every_id = np.sort(saved["ids"])
    size = len(every_id)
    dist, ids = client.search(size + 3, images=pixels(2, seed=13))
    assert ids.shape == (2, size + 3) and (ids[:, size:] == -1).all() and np.isinf(dist[:, size:]).all()
    for row in range(2):
        np.testing.assert_array_equal(np.sort(ids[row, :size]), every_id)
        assert np.all(np.diff(dist[row, :size]) >= 0)


def test_gallery_add_is_saved_and_searched(server, local_embedder):
    new = pixels(3, seed=14)
    with TritonClient(server.grpc) as c:
        before = len(Gallery.load(server.gallery))
        assert c.add(new, ids=[900, 901, 902], cams=[5, 5, 5]) == before + 3
        _, ids = c.search(1, images=new)
    saved = Gallery.load(server.gallery)
    assert len(saved) == before + 3 and ids[:, 0].tolist() == [900, 901, 902]
    np.testing.assert_array_equal(saved.search(local_embedder(new), 1)[1], ids)


BAD = [
    ("float pixels", EMBED_MODEL, {IMAGES: np.zeros((2, 32, 16, 3), np.float32)}, "data-type"),
    ("wrong size", EMBED_MODEL, {IMAGES: np.zeros((2, 16, 16, 3), np.uint8)}, "unexpected shape"),
    ("channels first", EMBED_MODEL, {IMAGES: np.zeros((2, 3, 32, 16), np.uint8)}, "unexpected shape"),
    ("empty batch", EMBED_MODEL, {IMAGES: np.zeros((0, 32, 16, 3), np.uint8)}, "byte size"),
    ("batch above max", EMBED_MODEL, {IMAGES: np.zeros((17, 32, 16, 3), np.uint8)}, "must be <= 16"),
    ("unknown model", "nope", {IMAGES: np.zeros((1, 32, 16, 3), np.uint8)}, "unknown model"),
    ("k = 0", "search", {IMAGES: np.zeros((1, 32, 16, 3), np.uint8), "k": np.array([0], np.int32)},
     "k must be one positive"),
    ("k < 0", "search", {IMAGES: np.zeros((1, 32, 16, 3), np.uint8), "k": np.array([-3], np.int32)},
     "k must be one positive"),
    ("search above max", "search", {IMAGES: np.zeros((17, 32, 16, 3), np.uint8), "k": np.array([1], np.int32)},
     "expected 1..16"),
    ("no query", "search", {"k": np.array([1], np.int32)}, "exactly one of"),
    ("no query rows", "search", {EMBEDDINGS: np.zeros((0, 32), np.float32), "k": np.array([1], np.int32)},
     "search batch of 0, expected 1..16"),
    ("k far above the gallery", "search", {EMBEDDINGS: np.zeros((1, 32), np.float32),
                                           "k": np.array([10**6], np.int32)}, "padding cap 2048"),
    ("ids do not match", "gallery_add", {IMAGES: np.zeros((3, 32, 16, 3), np.uint8),
                                         "ids": np.arange(2, dtype=np.int64)}, "3 images, 2 ids"),
]


OUTPUT = {"search": "distances", "gallery_add": "count"}


@pytest.mark.parametrize("model,inputs,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_refused_and_server_keeps_serving(client, local_embedder, model, inputs, reason):
    with pytest.raises(ServerError, match=reason):
        client.infer(model, inputs, [OUTPUT.get(model, EMBEDDINGS)])
    images = pixels(2, seed=15)
    np.testing.assert_allclose(client.embed(images), local_embedder(images), atol=ATOL)


MALFORMED = [  # KServe v2 JSON bodies as curl would send them, each refused by the engine's own checks
    ("no query", "search", [{"name": "k", "shape": [1], "datatype": "INT32", "data": [3]}], "exactly one of"),
    ("no k", "search", [{"name": "embeddings", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}],
     "missing input 'k'"),
    ("k = 0", "search", [{"name": "k", "shape": [1], "datatype": "INT32", "data": [0]},
                         {"name": "embeddings", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}],
     "k must be one positive"),
    ("ids do not match", "gallery_add", [{"name": "images", "shape": [1, 32, 16, 3], "datatype": "UINT8",
                                          "data": [0] * 1536},
                                         {"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}],
     "1 images, 2 ids"),
]


@pytest.mark.parametrize("model,inputs,reason", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_a_one_line_400_without_traceback(server, model, inputs, reason):
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"inputs": inputs}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{server.http}/v2/models/{model}/infer", data=body,
                                                      method="POST"), timeout=60)
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["error"]
    assert reason in error and "\n" not in error
    assert not any(leak in error for leak in ("Traceback", ".py", "/work", "/tmp")), error


def test_malformed_grpc_request_is_invalid_argument(server):
    from tritonclient.grpc import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    k = InferInput("k", [1], "INT32")
    k.set_data_from_numpy(np.array([3], np.int32))
    with pytest.raises(InferenceServerException) as refused:
        InferenceServerClient(server.grpc.split("://")[1]).infer("search", [k])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message().startswith("send exactly one of") and "Traceback" not in str(refused.value)


KILLED_CLIENT = """
import sys, numpy as np
from engine.client import TritonClient
images = np.random.default_rng(0).integers(0, 256, (16, 32, 16, 3), dtype=np.uint8)
with TritonClient(sys.argv[1]) as c:
    print("sending", flush=True)
    while True:
        c.embed(images)
"""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_killed_mid_request_does_not_hurt_others(server, local_embedder, protocol):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, getattr(server, protocol)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    images = [pixels(5, seed=20 + i) for i in range(4)]
    answers: list[np.ndarray] = []
    errors: list[BaseException] = []

    def others() -> None:
        try:
            with TritonClient(server.grpc) as c:
                answers.extend(c.embed(batch) for batch in images * 5)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sending"
        worker = threading.Thread(target=others)
        worker.start()
        time.sleep(0.3)  # the killed client has requests in flight by now (it never stops sending)
        proc.kill()
        worker.join(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert not errors and len(answers) == 20
    for i, got in enumerate(answers):
        np.testing.assert_allclose(got, local_embedder(images[i % 4]), atol=ATOL)
    with TritonClient(server.http) as c:
        np.testing.assert_allclose(c.embed(images[0]), local_embedder(images[0]), atol=ATOL)


@pytest.fixture
def crops(tmp_path):
    """8 Market-named PNG crops (lossless, so decoding gives the pixels back)."""
    from PIL import Image

    folder = tmp_path / "crops"
    folder.mkdir()
    for n, image in enumerate(pixels(8, seed=30)):
        Image.fromarray(image).save(folder / f"{n // 2 + 1:04d}_c{n % 2 + 1}s1_{n:06d}_00.png")
    return folder


def test_embed_cli_against_the_server_equals_in_process(server, serve_artifact, crops, tmp_path):
    from engine.embed import main as embed_main
    from engine.gallery import read_gallery_file

    remote, local = tmp_path / "remote.npz", tmp_path / "local.npz"
    assert embed_main([str(crops), "--url", server.grpc, "--out", str(remote), "--no-progress"]) == 0
    assert embed_main([str(crops), "--artifact", str(serve_artifact), "--out", str(local), "--no-progress"]) == 0
    (_, got), (_, want) = read_gallery_file(remote), read_gallery_file(local)
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=ATOL)


def test_query_cli_against_the_server_lists_the_served_ranking(server, local_embedder, crops, capsys):
    from engine.images import load_image
    from engine.query import main as query_main

    query = sorted(crops.glob("*.png"))[0]
    assert query_main([str(query), "--url", server.http, "-k", "3"]) == 0
    listed = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[2:]]
    _, ids = Gallery.load(server.gallery).search(local_embedder(load_image(query, 32, 16)), 3)
    assert listed == ids[0].tolist()


def test_query_cli_names_rows_the_server_added(server, crops, capsys):
    """TritonClient.add, then engine.query --url with the served gallery file: every row is listed
    (this raised IndexError when the row images lived in a sidecar the server never updated)."""
    from engine.query import main as query_main

    with TritonClient(server.grpc) as c:
        count = c.add(pixels(2, seed=40), ids=[950, 951])
    query = sorted(crops.glob("*.png"))[0]
    capsys.readouterr()
    assert query_main([str(query), "--url", server.grpc, "--gallery", str(server.gallery), "-k", str(count)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("   ")]
    assert len(rows) == count and {r[5] for r in rows if int(r[1]) in (950, 951)} == {"-"}
    assert {r[5] for r in rows if int(r[1]) < 900} <= {f"row{n:04d}.png" for n in range(count)}


def test_a_gallery_that_records_no_model_is_served_with_one_warning_line(server):
    """The module's gallery is written without a model fingerprint (as files before them): the search
    model says so once; gallery_add, which loads the same file, stays quiet."""
    assert server.log.read_text(errors="replace").count("records no model fingerprint") == 1, server.log_tail()

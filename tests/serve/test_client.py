"""engine.client without a server: URLs, an unreachable server, argument checks."""
from __future__ import annotations

import numpy as np
import pytest
from _serving import free_ports

from engine import InputError
from engine.client import ServerError, TritonClient, parse_url


def test_urls_name_protocol_and_address():
    assert parse_url("grpc://127.0.0.1:9001") == ("grpc", "127.0.0.1:9001")
    assert parse_url("localhost:9000") == ("http", "localhost:9000")
    assert parse_url("http://host") == ("http", "host:8000")
    with pytest.raises(InputError, match="grpc://127.0.0.1:8001"):
        parse_url("ftp://host:1")


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_server_is_a_server_error_not_a_hang(scheme):
    (port,) = free_ports(1)
    with TritonClient(f"{scheme}://127.0.0.1:{port}", timeout_s=5) as client:
        assert not client.ready()
        with pytest.raises(ServerError, match="127.0.0.1"):
            client.infer("embed", {"images": np.zeros((1, 2, 2, 3), np.uint8)}, ["embeddings"])


def test_search_needs_exactly_one_query_kind():
    with TritonClient("http://127.0.0.1:1") as client, pytest.raises(InputError, match="exactly one"):
        client.search(3)


@pytest.mark.parametrize("k,query,reason", [
    (3, np.zeros((0, 32), np.float32), "no query rows"),
    (0, np.zeros((1, 32), np.float32), "positive int32, got 0"),
    (2**31, np.zeros((1, 32), np.float32), "positive int32"),
    (2.5, np.zeros((1, 32), np.float32), "positive int32, got 2.5"),
])
def test_search_arguments_are_checked_before_sending(k, query, reason):
    with TritonClient("http://127.0.0.1:1") as client, pytest.raises(InputError, match=reason):
        client.search(k, embeddings=query)


def test_empty_input_through_shared_memory_is_refused_by_name():
    """Triton's own answer to a 0-byte shared-memory input blames the region's offset."""
    with TritonClient("http://127.0.0.1:1", shared_memory=True) as client, \
            pytest.raises(InputError, match=r"\['images', 'ids'\] hold no data"):
        client.infer("gallery_add", {"images": np.zeros((0, 32, 16, 3), np.uint8), "ids": np.zeros(0, np.int64)},
                     ["count"])

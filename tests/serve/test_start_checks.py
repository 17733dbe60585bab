"""Start-up checks: where the server cannot listen is a one-line error (exit 2) before tritonserver starts.

No server is started here: ``subprocess.Popen`` is replaced by one that fails the test, so a check that
lets a bad endpoint through shows as a started tritonserver (which would also have asked the *other*
server on a used HTTP port whether it was ready).
"""
from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from _serving import free_ports, other_model, write_gallery

from serve.__main__ import main


@pytest.fixture
def no_tritonserver(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"tritonserver was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")


@pytest.fixture
def listener() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _serve(artifact, ports: list[int], *extra: str) -> list[str]:
    http, grpc, metrics = ports
    return [str(artifact), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--backend", "ort", "--device", "cpu", *extra]


@pytest.mark.parametrize("which,flag", [(0, "--http-port"), (1, "--grpc-port"), (2, "--metrics-port")])
def test_a_port_in_use_is_refused_by_name(serve_artifact, no_tritonserver, listener, capsys, which, flag):
    ports = free_ports(3)
    ports[which] = listener
    assert main(_serve(serve_artifact, ports)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {listener} is already in use" in err, err


@pytest.mark.parametrize("change,reason", [
    ((0, 99999), "--http-port 99999 is not a TCP port, expected 1..65535"),
    ((1, 0), "--grpc-port 0 is not a TCP port"),
    ((2, "same"), "three different ports"),
])
def test_ports_outside_the_range_or_shared_are_refused(serve_artifact, no_tritonserver, capsys, change, reason):
    ports = free_ports(3)
    which, value = change
    ports[which] = ports[0] if value == "same" else value
    assert main(_serve(serve_artifact, ports)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err, err


@pytest.mark.parametrize("address,reason", [
    ("192.0.2.1", "cannot listen on 192.0.2.1"),  # TEST-NET-1: routable nowhere, assigned to no interface
    ("no-such-host.invalid", "is not an address"),
])
def test_an_address_not_of_this_machine_is_refused(serve_artifact, no_tritonserver, capsys, address, reason):
    assert main(_serve(serve_artifact, free_ports(3), "--address", address)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and "--address" in err, err


def test_gallery_device_without_a_gallery_is_refused(serve_artifact, no_tritonserver, capsys):
    assert main(_serve(serve_artifact, free_ports(3), "--gallery-device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "there is no --gallery" in err, err


def test_a_gallery_of_another_model_is_refused_before_tritonserver_starts(serve_artifact, local_embedder,
                                                                           gallery_images, no_tritonserver,
                                                                           tmp_path, capsys):
    from engine.search.file import model_fingerprint

    theirs, ours = other_model(local_embedder.spec), model_fingerprint(local_embedder.spec)
    path = write_gallery(tmp_path / "g.npz", local_embedder, gallery_images, fingerprint=theirs)
    assert main(_serve(serve_artifact, free_ports(3), "--gallery", str(path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and theirs[:16] in err and ours[:16] in err and "--allow-other-model" in err, err


def test_a_sharded_gallery_of_another_model_is_refused_before_tritonserver_starts(serve_artifact, local_embedder,
                                                                                   no_tritonserver, tmp_path, capsys):
    from engine.search.file import model_fingerprint
    from engine.sharded.manifest import Manifest

    theirs, ours = other_model(local_embedder.spec), model_fingerprint(local_embedder.spec)
    Manifest.new(local_embedder.spec.embedding_dim, "auto", "float32", 2, theirs).write(tmp_path / "g.json")
    assert main(_serve(serve_artifact, free_ports(3), "--gallery", str(tmp_path / "g.json"), "--ray", "auto")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and theirs[:16] in err and ours[:16] in err and "--allow-other-model" in err, err


def test_allow_other_model_without_a_gallery_is_refused(serve_artifact, no_tritonserver, capsys):
    assert main(_serve(serve_artifact, free_ports(3), "--allow-other-model")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "there is no --gallery" in err, err

"""Helpers for the serve tests: pixels, a gallery file, free ports and a real `python -m serve` process.

Servers run as the command a user types (a subprocess on free loopback ports), so start-up, the
library-path fix, signals and exit codes are what is tested.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import Embedder
from engine.client import ADD_MODEL, EMBED_MODEL, SEARCH_MODEL, TritonClient
from engine.gallery import Gallery

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180  # a loaded 2-core machine takes ~15 s; the bound only stops a hung test
STOP_TIMEOUT_S = 60
ATOL = 1e-5  # ORT CPU rows may differ in the last bits when the dynamic batcher merges requests


def pixels(n: int, seed: int) -> np.ndarray:
    """uint8 images of the test artefact's 32x16 input."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 16, 3), dtype=np.uint8)


def gallery_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two images per id (duplicate ids are the re-id norm) on alternating cameras."""
    return np.arange(n, dtype=np.int64) // 2, np.arange(n, dtype=np.int64) % 2


def write_gallery(path: Path, embedder: Embedder, images: np.ndarray) -> Path:
    ids, cams = gallery_labels(len(images))
    gallery = Gallery(embedder.spec.embedding_dim)
    gallery.add(embedder(images), ids, cams)
    gallery.save(path)
    return path


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    proc: subprocess.Popen
    http: str
    grpc: str
    log: Path
    gallery: Path | None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit code (AssertionError if the server ignores it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored signal {sig} for {STOP_TIMEOUT_S} s:\n{self.log_tail()}") \
                from None


    def kill_all(self) -> None:
        """SIGKILL the server and tritonserver, its child: a crash, not a shutdown."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def group_alive(self, grace_s: float = 10.0) -> bool:
        """Whether a process of the server's group (tritonserver, model stubs, multiprocessing helpers)
        is still running ``grace_s`` after the server exited."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            if time.monotonic() > deadline:
                return True
            time.sleep(0.2)


def start_server(artifact: Path, log: Path, gallery: Path | None = None) -> Server:
    """``python -m serve`` on three free loopback ports; returns once every model reports ready."""
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "serve", str(artifact), "--backend", "ort", "--device", "cpu",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    if gallery is not None:
        cmd += ["--gallery", str(gallery)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(proc, f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}", log, gallery)
    models = (EMBED_MODEL,) if gallery is None else (EMBED_MODEL, SEARCH_MODEL, ADD_MODEL)
    deadline = time.monotonic() + START_TIMEOUT_S
    with TritonClient(server.http) as client:
        while not client.ready(models):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise AssertionError(f"server did not become ready (rc {proc.poll()}):\n{server.log_tail()}")
            time.sleep(0.25)
    return server

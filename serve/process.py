"""``python -m serve`` as a child process on free loopback ports: for tests, benchmarks and scripts.

The server runs as the command a user types, in its own process group, so a caller can stop it with
a signal (the clean path) or kill it with tritonserver and the model stubs (a crash).
``tritonserver()`` finds the tritonserver it started, so a test can see what it was told to load.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.client import ADD_MODEL, EMBED_MODEL, SEARCH_MODEL, TritonClient
from engine.errors import JLMLError

START_TIMEOUT_S = 180.0  # ~5 s idle, ~15 s on a loaded 2-core machine; the bound only stops a hang
STOP_TIMEOUT_S = 60.0


class ServerStartError(JLMLError, RuntimeError):
    """The server exited or did not become ready; the message carries the end of its log."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _environment() -> dict[str, str]:
    """The caller's environment with this project first on PYTHONPATH: the server runs in the log's
    folder, as a user's server runs wherever they are, and still imports this code."""
    root = str(Path(__file__).resolve().parents[1])
    path = [root, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    http: str
    grpc: str
    log: Path
    gallery: Path | None

    @classmethod
    def start(cls, artifact: str | os.PathLike[str], log: str | os.PathLike[str], *,
              gallery: str | os.PathLike[str] | None = None, extra: tuple[str, ...] = (),
              timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Start the server on three free loopback ports; return once every model reports ready."""
        server = cls.launch(artifact, log, gallery=gallery, extra=extra)
        server.wait_ready(timeout_s)
        return server

    @classmethod
    def launch(cls, artifact: str | os.PathLike[str], log: str | os.PathLike[str], *,
               gallery: str | os.PathLike[str] | None = None, extra: tuple[str, ...] = ()) -> ServerProcess:
        """Start the server on three free loopback ports and return at once (it is not ready yet). It runs in
        the log's folder, so ARTIFACT and GALLERY are made absolute first (a relative one named the caller's)."""
        http, grpc, metrics = free_ports(3)
        cmd = [sys.executable, "-m", "serve", str(Path(artifact).resolve()), "--address", "127.0.0.1", "--http-port",
               str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra]
        if gallery is not None:
            cmd += ["--gallery", str(Path(gallery).resolve())]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=Path(log).resolve().parent, env=_environment())
        return cls(proc, f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}", Path(log),
                   None if gallery is None else Path(gallery))

    def wait_ready(self, timeout_s: float) -> None:
        models = (EMBED_MODEL,) if self.gallery is None else (EMBED_MODEL, SEARCH_MODEL, ADD_MODEL)
        deadline = time.monotonic() + timeout_s
        with TritonClient(self.http) as client:
            while not client.ready(models):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill_all()
                    raise ServerStartError(f"server did not become ready (exit code {self.proc.poll()}); "
                                           f"its log:\n{self.log_tail()}")
                time.sleep(0.25)

    def tritonserver(self) -> list[str]:
        """The command line of the tritonserver this server started (its child); [] while there is none."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    args = (stat.parent / "cmdline").read_bytes().split(b"\0")
                    if Path(args[0].decode()).name == "tritonserver":
                        return [a.decode() for a in args if a]
        return []

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and return the exit code; a server that ignores it is killed (ServerStartError)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise ServerStartError(f"server ignored signal {sig} for {timeout_s} s:\n{self.log_tail()}") from None

    def kill_all(self) -> None:
        """SIGKILL the server and its process group (tritonserver, model stubs): a crash, not a shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def group_alive(self, grace_s: float = 10.0) -> bool:
        """Whether a process of the server's group is still running ``grace_s`` after the server exited."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            if time.monotonic() > deadline:
                return True
            time.sleep(0.2)

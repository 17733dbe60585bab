"""Request cost of the PyTriton server (issue 26's base, 1eabb15) against tritonserver on ARTIFACT/triton.

Both servers run at once on the same artefact; each round times benchmarks.serve.paired_overhead on
both (gRPC then HTTP, old then new), so both see the same machine load. The old server's serve/ is
taken from git (``git archive 1eabb15 serve | tar -x -C OLD``) and runs with this tree's engine.
PyTriton guards Triton's statistics endpoint, so Triton's own figures are left out here.

    PYTHONPATH=. python benchmarks/results/cpu/serve_repo_ab/old_vs_new.py ART BATCH ROUNDS PAIRS OUT.json PORT OLD
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.serve import Transport, paired_overhead
from engine import Embedder, ModelSpec
from engine.client import TritonClient

NO_STATS = {k: (0, 0) for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
TritonClient.statistics = lambda self, model="embed": NO_STATS  # type: ignore[method-assign]


def start(art: str, root: str, port: int, log: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{root}:{os.getcwd()}", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "serve", art, "--backend", "ort", "--device", "cpu", "--http-port", str(port),
           "--grpc-port", str(port + 1), "--metrics-port", str(port + 2)]
    proc = subprocess.Popen(cmd, env=env, cwd="/tmp", stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    with TritonClient(f"http://127.0.0.1:{port}") as client:
        while not client.ready(("embed",)):
            time.sleep(0.2)
    return proc


def main() -> None:
    art, batch, rounds, pairs, out, port, old = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5], \
        int(sys.argv[6]), sys.argv[7]
    ports = {"old": port, "new": port + 100}
    servers = {"old": start(art, old, port, f"{out}.old.log"),
               "new": start(art, os.getcwd(), port + 100, f"{out}.new.log")}
    shape = ModelSpec.load(art).image_shape
    images = [np.random.default_rng(i).integers(0, 256, (batch, *shape), dtype=np.uint8) for i in range(4)]
    rows = []
    print("load", os.getloadavg(), flush=True)
    with Embedder(art, backend="ort", device="cpu") as embedder:
        for r in range(rounds):
            for proto in ("grpc", "http"):
                for name in ("old", "new"):
                    url = f"{proto}://127.0.0.1:{ports[name] + (proto == 'grpc')}"
                    rows.append({"round": r, "server": name, "protocol": proto,
                                 **paired_overhead(Transport(url, False), embedder, images, pairs)})
    print("load", os.getloadavg(), flush=True)
    for proc in servers.values():
        proc.terminate()
        proc.wait(60)
    with open(out, "w") as fh:
        json.dump(rows, fh, indent=1)
    for proto in ("grpc", "http"):
        for name in ("old", "new"):
            got = [o for o in rows if (o["protocol"], o["server"]) == (proto, name)]
            print(f"{proto} {name} median over rounds: added {np.median([o['overhead_ms'] for o in got]):.2f} ms, "
                  f"in-process {np.median([o['in_process_p50_ms'] for o in got]):.2f}, "
                  f"server {np.median([o['paired_server_p50_ms'] for o in got]):.2f}")


if __name__ == "__main__":
    main()

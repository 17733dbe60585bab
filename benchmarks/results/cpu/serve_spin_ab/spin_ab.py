"""Request cost with ONNX Runtime's spin-waiting on (the default) and off (``--no-ort-spin``), issue 26.

Both servers run at once on the same artefact; each round times benchmarks.serve.paired_overhead on
both (gRPC then HTTP, spin then no-spin), so both see the same machine load. The in-process reference
keeps ONNX Runtime's default (spinning), as a library user gets it.

    PYTHONPATH=. python benchmarks/results/cpu/serve_spin_ab/spin_ab.py ART BATCH ROUNDS PAIRS OUT.json PORT
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


def start(art: str, port: int, log: str, spin: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serve", art, "--backend", "ort", "--device", "cpu", "--http-port", str(port),
           "--grpc-port", str(port + 1), "--metrics-port", str(port + 2), *([] if spin else ["--no-ort-spin"])]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    with TritonClient(f"http://127.0.0.1:{port}") as client:
        while not client.ready(("embed",)):
            time.sleep(0.2)
    return proc


def main() -> None:
    art, batch, rounds, pairs, out, port = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5], int(sys.argv[6])
    ports = {"spin": port, "no-spin": port + 100}
    servers = {name: start(art, p, f"{out}.{name}.log", name == "spin") for name, p in ports.items()}
    shape = ModelSpec.load(art).image_shape
    images = [np.random.default_rng(i).integers(0, 256, (batch, *shape), dtype=np.uint8) for i in range(4)]
    rows = []
    load_before = os.getloadavg()
    with Embedder(art, backend="ort", device="cpu") as embedder:
        for r in range(rounds):
            for proto in ("grpc", "http"):
                for name, p in ports.items():
                    url = f"{proto}://127.0.0.1:{p + (proto == 'grpc')}"
                    rows.append({"round": r, "server": name, "protocol": proto,
                                 **paired_overhead(Transport(url, False), embedder, images, pairs)})
                    print(rows[-1]["server"], proto, round(rows[-1]["overhead_ms"], 2), flush=True)
    load_after = os.getloadavg()
    for proc in servers.values():
        proc.terminate()
        proc.wait(60)
    summary = {f"{name} {proto}": float(np.median([x["overhead_ms"] for x in rows
                                                   if x["server"] == name and x["protocol"] == proto]))
               for name in ports for proto in ("grpc", "http")}
    with open(out, "w") as f:
        json.dump({"loadavg_before": load_before, "loadavg_after": load_after, "batch": batch,
                   "median_overhead_ms": summary, "rows": rows}, f, indent=1)
    print(json.dumps(summary, indent=1), "load", load_before, load_after)


if __name__ == "__main__":
    main()

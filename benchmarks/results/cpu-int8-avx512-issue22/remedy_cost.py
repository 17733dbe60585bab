"""Issue 22 measurement script: images/s of ONNX graphs timed in turn in one process (remedy_cost.txt, before_after.txt).

Run from the repository root with PYTHONPATH=. (see benchmarks/README.md, INT8 embedding on CPU).
"""

import sys
import time

import numpy as np
import onnxruntime as ort

threads, rounds = int(sys.argv[1]), int(sys.argv[2])
paths = sys.argv[3:]


def sess(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])


S = {p: sess(p) for p in paths}
x = np.random.default_rng(0).integers(0, 256, (64, 160, 64, 3), dtype=np.uint8)
for s in S.values():
    s.run(None, {"images": x})
res = {p: [] for p in paths}
for _ in range(rounds):
    for p, s in S.items():
        t = time.perf_counter()
        s.run(None, {"images": x})
        res[p].append(time.perf_counter() - t)
for p, v in res.items():
    print(f"{p:45s} median {64 / np.median(v):7.1f} img/s  best {64 / min(v):7.1f}")

"""Issue 22 measurement script: two threads: sequential vs parallel execution, spinning (second half of session_options.txt).

Run from the repository root with PYTHONPATH=. (see benchmarks/README.md, INT8 embedding on CPU).
"""

import sys
import time

import numpy as np
import onnxruntime as ort
import torch

from train.checkpoint import load_checkpoint

art, ckpt, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = load_checkpoint(ckpt).model.float().eval()
x = np.random.default_rng(0).integers(0, 256, (64, 160, 64, 3), dtype=np.uint8)


def sess(path, intra, parallel=False, inter=1, **cfg):
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = inter
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    for k, v in cfg.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


V = {
    "seq": sess(f"{art}/model.onnx", threads),
    "par": sess(f"{art}/model.onnx", 1, True, threads),
    "seq_nospin": sess(f"{art}/model.onnx", threads, **{"session.intra_op.allow_spinning": "0"}),
    "int8_seq": sess(f"{art}/model.int8.onnx", threads),
    "int8_par": sess(f"{art}/model.int8.onnx", 1, True, threads),
}
for s in V.values():
    s.run(None, {"images": x})
res = {k: [] for k in ["torch", *V]}
for _ in range(rounds):
    with torch.no_grad():
        t = time.perf_counter()
        model(torch.from_numpy(x))
        res["torch"].append(time.perf_counter() - t)
    for k, s in V.items():
        t = time.perf_counter()
        s.run(None, {"images": x})
        res[k].append(time.perf_counter() - t)
base = 64 / np.median(res["torch"])
for k, v in res.items():
    ips = 64 / np.median(v)
    print(f"{k:10s} {ips:7.1f} img/s {ips / base:5.2f}x eager  (best {64 / min(v):.1f})")

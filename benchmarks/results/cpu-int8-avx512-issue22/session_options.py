"""Issue 22 measurement script: ONNX Runtime session settings and the preprocessing rewrite, interleaved with PyTorch eager (session_options.txt).

Run from the repository root with PYTHONPATH=. (see benchmarks/README.md, INT8 embedding on CPU).
"""

import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from train.checkpoint import load_checkpoint

TMP = tempfile.mkdtemp()

art, ckpt, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = load_checkpoint(ckpt).model.float().eval()
x = np.random.default_rng(0).integers(0, 256, (64, 160, 64, 3), dtype=np.uint8)


def pre_nchw(src, dst):
    m = onnx.load(src)
    g = m.graph
    nodes = list(g.node)

    def first(op):
        return next(n for n in nodes if n.op_type == op)

    cast, mul, add, tr = first("Cast"), first("Mul"), first("Add"), first("Transpose")
    idx = sorted(nodes.index(n) for n in (cast, mul, add, tr))
    inits = {i.name: i for i in g.initializer}
    for n in (mul, add):
        for name in n.input:
            if name in inits:
                a = numpy_helper.to_array(inits[name]).reshape(1, 3, 1, 1)
                inits[name].CopyFrom(numpy_helper.from_array(a, name))
    # rewire: cast -> tr -> mul -> add -> (consumers of tr)
    tr_out = tr.output[0]
    add_out = add.output[0]
    cast_out = cast.output[0]
    for n in nodes:
        if n in (cast, mul, add, tr):
            continue
        for i, name in enumerate(n.input):
            if name == tr_out:
                n.input[i] = add_out
    tr.input[0] = cast_out
    mul.input[list(mul.input).index(cast_out)] = tr_out
    rest = [n for n in nodes if n not in (cast, mul, add, tr)]
    new = rest[: idx[0]] + [cast, tr, mul, add] + rest[idx[0] :]
    del g.node[:]
    g.node.extend(new)
    for vi in list(g.value_info):
        if vi.name in (mul.output[0], add_out, tr_out):
            g.value_info.remove(vi)
    onnx.save(m, dst)


pre_nchw(f"{art}/model.onnx", os.path.join(TMP, "fp32_pre.onnx"))


def sess(path, **cfg):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    arena = cfg.pop("arena", True)
    so.enable_cpu_mem_arena = arena
    for k, v in cfg.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


V = {
    "base": sess(f"{art}/model.onnx"),
    "daz": sess(f"{art}/model.onnx", **{"session.set_denormal_as_zero": "1"}),
    "nospin": sess(f"{art}/model.onnx", **{"session.intra_op.allow_spinning": "0"}),
    "noarena": sess(f"{art}/model.onnx", arena=False),
    "pre_nchw": sess(os.path.join(TMP, "fp32_pre.onnx")),
    "int8": sess(f"{art}/model.int8.onnx"),
    "int8_pre": None,
}
pre_nchw(f"{art}/model.int8.onnx", os.path.join(TMP, "int8_pre.onnx"))
V["int8_pre"] = sess(os.path.join(TMP, "int8_pre.onnx"))
ref = V["base"].run(None, {"images": x})[0]
for k in ("pre_nchw",):
    print(k, "max|diff| vs base", float(np.abs(V[k].run(None, {"images": x})[0] - ref).max()))
print(
    "int8_pre vs int8",
    float(np.abs(V["int8_pre"].run(None, {"images": x})[0] - V["int8"].run(None, {"images": x})[0]).max()),
)
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
    print(f"{k:10s} {ips:7.1f} img/s {ips / base:5.2f}x eager  (min-time {64 / min(v):.1f})")

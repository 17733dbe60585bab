"""PyTorch vs the exported ONNX (FP32, FP16) on ONNX Runtime for one checkpoint (RESULTS.md, issue 11).

Usage: PYTHONPATH=. python results/levers_issue11/precision_eval.py CKPT ARTIFACT DATASET SPLIT OUT.json
"""
import json, sys, time
import numpy as np, torch
from engine import Embedder
from engine.metrics import evaluate
from train.checkpoint import load_checkpoint
from train.loop import embed
from train.data import load_reid_set
torch.set_num_threads(1)
ckpt, artifact, dataset, split, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
ck = load_checkpoint(ckpt)
data = load_reid_set(dataset, height=ck.config.height, width=ck.config.width, split_seed=split)
def score(q, g):
    m = evaluate(q, data.query_pids, data.query_cams, g, data.gallery_pids, data.gallery_cams, protocol=data.protocol)
    return {k: (round(100 * v, 2) if k != "num_query" else v) for k, v in m.items()}
rows, embs = {}, {}
embs["pytorch"] = (embed(ck.model, data.query_images), embed(ck.model, data.gallery_images))
for prec in ("fp32", "fp16"):
    with Embedder(artifact, backend="ort", device="cpu", precision=prec) as e:
        embs[f"onnxruntime {prec}"] = (e(data.query_images), e(data.gallery_images))
for name, (q, g) in embs.items():
    rows[name] = score(q, g)
ref = embs["pytorch"]
diffs = {name: float(max(np.abs(a - b).max() for a, b in zip(ref, pair))) for name, pair in embs.items() if name != "pytorch"}
res = {"checkpoint": ckpt, "artifact": artifact, "dataset": dataset, "split_seed": split, "rows": rows, "max_embedding_diff": diffs}
print(json.dumps(res, indent=2))
open(out, "w").write(json.dumps(res, indent=2) + "\n")

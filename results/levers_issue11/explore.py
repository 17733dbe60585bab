"""Exploration runs of RESULTS.md (issue 11), split 0 only: python explore.py NAME JSON (run from the repo root
with PYTHONPATH=.); appends one JSON line per run to /tmp/m11/results.jsonl (copied to explore_split0.jsonl).
"""
import json, sys, time
import torch
from train.config import JLMLConfig
from train.loop import TrainOptions, fit, embed
from train.data import Augment, load_reid_set
from engine.metrics import evaluate
from engine.rerank import RerankParams
name, spec = sys.argv[1], json.loads(sys.argv[2])
torch.set_num_threads(spec.get("threads", 1))
cfg = JLMLConfig(**spec["cfg"])
opts = TrainOptions(**{"progress": False, **spec["opts"]})
data = load_reid_set(spec.get("dataset", "viper"), height=cfg.height, width=cfg.width, split_seed=spec.get("split", 0), **spec.get("data", {}))
init = torch.load(spec["init"], weights_only=True) if spec.get("init") else None
aug = spec.get("aug", {})
c0 = time.process_time(); t0 = time.time()
if spec.get("pretrain"):
    from train.data.combine import combine_train_sets
    pre = spec["pretrain"]
    pdata = combine_train_sets([load_reid_set(n, height=cfg.height, width=cfg.width, **o) for n, o in pre["sets"].items()])
    print(pdata.describe(), flush=True)
    popts = TrainOptions(**{"progress": False, **spec["opts"], "epochs": pre["epochs"], "seed": 0})
    init = fit(cfg, pdata, popts, f"/tmp/m11/runs/{name}_pre", make_augment=lambda s: Augment(seed=s, **aug)).model.state_dict()
    print("pretrain cpu", time.process_time() - c0, flush=True)
res = fit(cfg, data, opts, f"/tmp/m11/runs/{name}", make_augment=lambda s: Augment(seed=s, **aug), init=init)
cpu = time.process_time() - c0
out = {"name": name, "spec": spec, "cpu_s": cpu, "wall_s": time.time() - t0,
       "acc": [round(h["acc"], 3) for h in res.history]}
model = res.model
for flip in (False, True):
    model.cfg = cfg.replace(flip_test=flip)
    q, g = embed(model, data.query_images), embed(model, data.gallery_images)
    for rr in (None, RerankParams()):
        m = evaluate(q, data.query_pids, data.query_cams, g, data.gallery_pids, data.gallery_cams, protocol=data.protocol, rerank=rr)
        out[f"flip{int(flip)}_rr{int(rr is not None)}"] = {k: round(100 * v, 1) for k, v in m.items() if k != "num_query"}
if spec.get("save"):
    torch.save(res.model.state_dict(), spec["save"])
print(json.dumps(out))
with open("/tmp/m11/results.jsonl", "a") as f:
    f.write(json.dumps(out) + "\n")

"""Evaluate a checkpoint with/without per-camera mean centering (train-set means, or test-set means)."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the checkout
import numpy as np, torch
from train.checkpoint import load_checkpoint
from train.loop import embed
from train.data import load_reid_set
from engine.metrics import evaluate
torch.set_num_threads(1)
path, dataset, split = sys.argv[1], sys.argv[2], int(sys.argv[3])
ck = load_checkpoint(path); model = ck.model.eval(); cfg = ck.config
d = load_reid_set(dataset, height=cfg.height, width=cfg.width, split_seed=split, progress=False)
q, g, t = embed(model, d.query_images), embed(model, d.gallery_images), embed(model, d.train_images)
def ev(q, g):
    m = evaluate(q, d.query_pids, d.query_cams, g, d.gallery_pids, d.gallery_cams, protocol=d.protocol)
    return round(100 * m["rank1"], 1), round(100 * m["mAP"], 1)
def norm(x): return x / np.linalg.norm(x, axis=1, keepdims=True)
out = {"plain": ev(q, g)}
# train-set per-camera means (inductive)
mq = t[d.train_cams == d.query_cams[0]].mean(0); mg = t[d.train_cams == d.gallery_cams[0]].mean(0)
out["train_cam_mean"] = ev(norm(q - mq), norm(g - mg))
out["train_mean"] = ev(norm(q - t.mean(0)), norm(g - t.mean(0)))
out["test_cam_mean"] = ev(norm(q - q.mean(0)), norm(g - g.mean(0)))
print(path, json.dumps(out))

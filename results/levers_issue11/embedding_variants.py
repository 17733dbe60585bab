"""Evaluate embedding variants of a checkpoint: concat (served), per-branch-normalised concat, each branch, pre-neck."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the checkout
import numpy as np, torch, torch.nn.functional as F
from train.checkpoint import load_checkpoint
from train.data import load_reid_set
from engine.metrics import evaluate
torch.set_num_threads(1)
path, dataset, split = sys.argv[1], sys.argv[2], int(sys.argv[3])
ck = load_checkpoint(path); model = ck.model.eval(); cfg = ck.config
d = load_reid_set(dataset, height=cfg.height, width=cfg.width, split_seed=split, progress=False)
pre = {}
for name, br in model.branches.items():
    br.neck.register_forward_hook(lambda m, i, o, name=name: pre.__setitem__(name, i[0].detach()))
def feats(images, flip=False):
    with torch.inference_mode():
        x = torch.from_numpy(images)
        f = model.forward_features(x.flip(2) if flip else x)
        return {k: v.float() for k, v in f.items()}, {k: v.float() for k, v in pre.items()}
def ev(q, g):
    m = evaluate(q.numpy(), d.query_pids, d.query_cams, g.numpy(), d.gallery_pids, d.gallery_cams, protocol=d.protocol)
    return round(100 * m["rank1"], 1), round(100 * m["mAP"], 1)
(qf, qp), (gf, gp) = feats(d.query_images), feats(d.gallery_images)
(qf2, qp2), (gf2, gp2) = feats(d.query_images, True), feats(d.gallery_images, True)
n = lambda x: F.normalize(x, dim=1)
cat = lambda f: torch.cat([f["global"], f["local"]], 1)
ncat = lambda f: torch.cat([n(f["global"]), n(f["local"])], 1)
avg = lambda a, b: {k: (a[k] + b[k]) / 2 for k in a}
out = {"served": ev(n(cat(qf)), n(cat(gf))), "branch_norm": ev(n(ncat(qf)), n(ncat(gf))),
       "global": ev(n(qf["global"]), n(gf["global"])), "local": ev(n(qf["local"]), n(gf["local"])),
       "preneck": ev(n(cat(qp)), n(cat(gp))), "preneck_bn": ev(n(ncat(qp)), n(ncat(gp))),
       "flip": ev(n(cat(avg(qf, qf2))), n(cat(avg(gf, gf2)))), "flip_bn": ev(n(ncat(avg(qf, qf2))), n(ncat(avg(gf, gf2))))}
print(path, json.dumps(out), flush=True)
